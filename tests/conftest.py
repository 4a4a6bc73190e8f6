"""Shared fixtures: one small phantom study generated once per test session."""

import json
import os
import pathlib
import tempfile

import pytest

TESTS_DIR = pathlib.Path(__file__).parent

MAX_WORKERS = 4
"""Most pytest-xdist workers of ``-n auto`` (setup.cfg): each generates the session's phantom studies once, and most
tests run subprocesses of one thread, so a worker per core pays on 2 cores and stops paying beyond a few."""


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may use, at most ``MAX_WORKERS``."""
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)))


def pytest_configure(config):
    """Cached validation results (pipeline.data.validation) in a folder of this session, inherited by the bundle runs:
    no result of an earlier session or of the user's own runs is read. Under xdist, each worker's share of the
    cores."""
    os.environ["QMAP_HYBRID_CACHE"] = tempfile.mkdtemp(prefix="qmap-hybrid-cache-")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # xdist workers share the cores: torch's threads in one would wait on the other's
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(scope="session")
def physics_reference():
    """The pulse-by-pulse reference values (copy of shared/reference/physics_reference.json)."""
    return json.loads((TESTS_DIR / "physics_reference.json").read_text())


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A 3-subject phantom study (train / validation / test) cropped to 16 sagittal planes (the default axial slices need >= 16 pixels per side).

    Returns the path of its ``dataset.json`` manifest (paths relative to its folder).
    """
    from pipeline.phantom import generate_study

    return generate_study(tmp_path_factory.mktemp("tiny_study"), n_subjects=3, seed=7, sagittal_slices=16)


@pytest.fixture(scope="session")
def full_study(tmp_path_factory):
    """A one-subject full-size phantom study (sub-01, testing; ~25 s): what registration, brain extraction and
    validation need, a whole brain. Returns the path of its ``dataset.json``."""
    from pipeline.phantom import generate_study

    return generate_study(tmp_path_factory.mktemp("full_study"), n_subjects=1, seed=3)


@pytest.fixture(scope="session")
def full_subject(full_study) -> dict:
    """The manifest entry of the full-size subject with absolute paths (``t1_map``: 3.5 mm labels, ``t1_ref``: 1 mm)."""
    from pipeline.data import load_datalist

    return load_datalist(full_study, "testing")[0]

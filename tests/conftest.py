"""Shared fixtures: one small phantom study generated once per test session."""

import json
import pathlib

import pytest

TESTS_DIR = pathlib.Path(__file__).parent


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
    """A 2-subject full-size phantom study (sub-01 training, sub-02 testing; ~25 s per subject): what registration,
    brain extraction and validation need, a whole brain. Returns the path of its ``dataset.json``."""
    from pipeline.phantom import generate_study

    return generate_study(tmp_path_factory.mktemp("full_study"), n_subjects=2, seed=11)

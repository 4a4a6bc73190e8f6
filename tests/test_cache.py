"""Tests of pipeline.cache (the on-disk cache of the validation, the template fit and the EPG tables)."""

from __future__ import annotations

import json

import numpy as np

from pipeline.cache import CACHE_ENV, cache_dir, cached_array, cached_json


def test_cache_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir("validation") == tmp_path / "validation"
    monkeypatch.delenv(CACHE_ENV)
    assert str(cache_dir("template_fit")).endswith(".cache/qmap-hybrid/template_fit")


def test_cached_json_computes_once_and_recomputes_an_unreadable_entry(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return (3, 4.5)

    def cached():
        return cached_json(path, compute, encode=lambda v: {"pair": list(v)}, decode=lambda s: tuple(s["pair"]))

    path = tmp_path / "kind" / "key.json"
    assert cached() == (3, 4.5) and cached() == (3, 4.5)
    assert len(calls) == 1 and json.loads(path.read_text()) == {"pair": [3, 4.5]}
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed
    for damaged in ("{not json", json.dumps({"other": 1})):  # half-written, another layout
        path.write_text(damaged)
        assert cached() == (3, 4.5)
    assert len(calls) == 3 and json.loads(path.read_text()) == {"pair": [3, 4.5]}


def test_cached_json_without_a_writable_folder_still_computes(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    value = cached_json(blocker / "key.json", lambda: 7, encode=lambda v: v, decode=lambda s: s)
    assert value == 7 and blocker.read_text() == "not a folder"


def test_cached_array_computes_once_and_recomputes_a_damaged_or_misshapen_entry(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6.0).reshape(2, 3)

    path = tmp_path / "tables" / "key.npy"
    first = cached_array(path, compute, shape=(2, 3))
    second = cached_array(path, compute, shape=(2, 3))
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 1 and list(path.parent.iterdir()) == [path]
    np.testing.assert_array_equal(np.load(path), compute())
    for damaged in (b"\x93NUMPY half", None):  # half-written, another shape
        if damaged is None:
            np.save(path, np.zeros((3, 2)))
        else:
            path.write_bytes(damaged)
        np.testing.assert_array_equal(cached_array(path, compute, shape=(2, 3)), np.arange(6.0).reshape(2, 3))
    assert len(calls) == 4  # 1 + 2 recomputations + the reference above

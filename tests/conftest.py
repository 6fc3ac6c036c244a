"""Shared fixtures: seeds that vary between runs (tests must pass for any seed) and reference data."""

from __future__ import annotations

import functools
import json
import os

import jsonschema
import numpy as np
import pytest


@pytest.fixture(params=[0, 1, 2])
def rng(request):
    """A random generator; VOXFIT_TEST_SEED shifts the seeds so a run can explore others."""
    return np.random.default_rng(request.param + int(os.environ.get("VOXFIT_TEST_SEED", "0")))


@pytest.fixture
def no_reserve(monkeypatch):
    """Streamed fits keep none of the memory cap for the interpreter, so that tests can stream kilobytes of
    data under kilobyte caps (outside tests, 256 MiB of the cap are kept for it)."""
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)  # (read through reserved_bytes by every plan)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "planted_model_json: the test writes model.json files that are not of this version on purpose (older "
        "forms, refusals); the check of every model.json under its tmp_path is skipped",
    )


@pytest.fixture(autouse=True)
def model_json_valid(request):
    """After each test that has a tmp_path: every model.json under it holds to the package's JSON Schema
    (voxfit/models/model.schema.json), so that every file the suite makes is checked. Files that are not JSON
    objects are left out: voxfit writes only objects, so those were planted by a test of refusals."""
    checked = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("planted_model_json")
    tmp_path = request.getfixturevalue("tmp_path") if checked else None  # (set up first: torn down after the check)
    yield
    for path in tmp_path.rglob("model.json") if checked else ():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _schema().iter_errors(record)]
            assert not errors, f"{path} does not hold to model.schema.json: {errors}"


@functools.cache
def _schema():
    from voxfit.models.record import schema

    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

"""Shared fixtures: seeds that vary between runs (tests must pass for any seed) and reference data."""

from __future__ import annotations

import os

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

"""benchmarks/bench_users.py at its tiny size (--small): each part runs end to end, its baselines are measured, and
where nilearn is installed the two tools' z maps agree (OLS to float32 rounding; AR(1) closely, nilearn binning its
AR coefficients). Timings are printed, never asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_users():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_users

        yield bench_users
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("part", ["mni", "cifti", "group"])
def test_each_part_runs_at_the_small_size(bench_users, part, tmp_path, capsys):
    """Each part end to end; nilearn beside voxfit in the first only, and there beside the .nii.gz rows only
    (each nilearn run is a process of seconds: the other parts' nilearn scripts, and its runs on the .nii, are the
    same calls on other inputs; the .nii rows' z maps are still held to nilearn's, of the same array)."""
    with_nilearn = part == "mni"
    options = ["--nilearn-gz-only"] if with_nilearn else ["--no-nilearn"]
    rows = bench_users.main([part, "--small", "--keep", str(tmp_path), *options])
    printed = capsys.readouterr().out
    assert "floor" in printed and len(rows) == {"mni": 7, "cifti": 3, "group": 3}[part]
    for row in rows:
        assert row.voxfit.wall > 0 and row.voxfit.peak > 0 and row.floor > 0
        assert row.label in printed
    if not with_nilearn or not bench_users.has_nilearn():
        assert "nilearn: not run" in printed
        assert all(row.nilearn is None for row in rows)
        return
    # voxfit's default, and the run as 3-D scans (its z map held to the 4-D run's): no nilearn beside them
    automatic = [row for row in rows if "automatic mask" in row.label or "3-D scans" in row.label]
    assert len(automatic) == 3 and all(row.nilearn is None and row.z_diff is None for row in automatic)
    # nilearn timed beside the .nii.gz rows; every masked row of the 4-D run, .nii too, compared with its z maps
    compared = [row for row in rows if row not in automatic]
    assert [row.label for row in compared] == ["nii.gz OLS", "nii.gz AR1", "nii OLS", "nii AR1"]
    assert all(row.z_diff is not None for row in compared)
    assert all(row.nilearn is not None and row.nilearn.wall > 0 for row in compared[:2])
    assert all(row.nilearn is None for row in compared[2:])
    for row in rows:
        if row.z_diff is None:  # permutation rows and voxfit's default: timed only
            continue
        if "AR1" in row.label:
            assert row.z_corr > 0.95
        else:
            assert row.z_diff < 1e-3 and row.z_corr > 0.999999

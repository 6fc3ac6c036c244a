"""How voxfit uses pybids' index: its configurations written in one transaction (pybids committed once per entity,
about 0.1 s of every layout a study builds), with the rows pybids itself writes."""

from __future__ import annotations

import pytest

pytest.importorskip("bids")

import sqlalchemy  # noqa: E402
from bids.layout import db  # noqa: E402

from voxfit.bids.layout import _bids  # noqa: E402

CONFIGS = ["bids", "derivatives"]


def _built(reset, folder, monkeypatch):
    """A pybids index's database in `folder` holding its configurations alone, written by `reset`: (the rows of
    every table, the number of commits)."""
    commits = []
    monkeypatch.setattr(db.ConnectionManager, "reset_database", reset)
    count = lambda session: commits.append(session)  # noqa: E731
    sqlalchemy.event.listen(sqlalchemy.orm.Session, "after_commit", count)
    try:
        init = {"root": "ROOT", "derivatives": None, "config": CONFIGS}
        manager = db.ConnectionManager(str(folder), reset_database=True, config=CONFIGS, init_args=init)
    finally:
        sqlalchemy.event.remove(sqlalchemy.orm.Session, "after_commit", count)
    connection = manager.engine.raw_connection()
    try:
        return list(connection.iterdump()), len(commits)
    finally:
        connection.close()


def test_the_configurations_are_written_in_one_commit_with_pybids_own_rows(tmp_path, monkeypatch):
    _bids()
    wrapped = db.ConnectionManager.reset_database
    assert getattr(wrapped, "_voxfit_wrapped", False)
    _bids()
    assert db.ConnectionManager.reset_database is wrapped  # (wrapped once per process, not once per study)
    ours, our_commits = _built(wrapped, tmp_path / "ours", monkeypatch)
    theirs, their_commits = _built(wrapped.__wrapped__, tmp_path / "theirs", monkeypatch)
    assert our_commits == 1
    assert their_commits > 20  # (pybids' own: one per entity of its configurations)
    assert sorted(ours) == sorted(theirs)  # (the same rows; pybids inserts them in another order in one flush)
    assert sum(row.startswith('INSERT INTO "entities"') for row in ours) > 20

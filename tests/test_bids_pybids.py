"""voxfit beside pybids: the index's configurations written in one transaction (pybids committed once per entity,
about 0.1 s of every layout a study builds), with the rows pybids itself writes; participants.tsv's cells read
before any run is fitted as the group fit reads them from pybids' table."""

from __future__ import annotations

import gc
import weakref

import pytest

pytest.importorskip("bids")

import pandas as pd  # noqa: E402
import sqlalchemy  # noqa: E402
from bids.layout import db  # noqa: E402

from voxfit.bids.layout import _bids  # noqa: E402
from voxfit.bids.study import PANDAS_MISSING, _number, _participants_rows  # noqa: E402

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


def _wrapped_once(name: str):
    """pybids with BIDSLayout's method `name` wrapped by voxfit, once per process, and pybids' own method."""
    from bids.layout import BIDSLayout

    bids = _bids()
    wrapped = getattr(BIDSLayout, name)
    assert getattr(wrapped, "_voxfit_wrapped", False)
    _bids()
    assert getattr(BIDSLayout, name) is wrapped  # (once per process)
    return bids, wrapped.__wrapped__


def _indexed(tmp_path, runs: int):
    """A 2-subject dataset with its derivatives, and the layout voxfit builds of them."""
    from voxfit.bids.layout import index
    from voxfit.bids.synthetic import make_dataset

    ds = make_dataset(tmp_path / "ds", subjects=2, runs=runs, scans=20, shape=(6, 6, 5))
    return ds, index(ds.root, [ds.derivatives])


def test_a_layouts_entities_are_read_once_per_scope_and_filter_with_pybids_own_answer(tmp_path):
    """pybids reads a layout's entities anew at every get_entities call (joining every file's tags where metadata
    is False; get_nearest calls it for each run's tables): wrapped, a layout voxfit has built keeps its answer per
    scope and filter, for the layouts then in that scope; pybids' own entities, in a dict of each call's own. A
    layout being built (its metadata's entities come last) or built elsewhere is read each time."""
    bids, own = _wrapped_once("get_entities")
    ds, layout = _indexed(tmp_path, runs=1)
    asked = (("all", False), ("all", None), ("raw", True), ("derivatives", None), ("all", False), ("all", None))
    asked += ((["raw", "derivatives"], False),)  # (pybids takes a list of scopes too: a reviewer's finding)
    for scope, metadata in asked:
        ours = layout.get_entities(scope, metadata)
        assert sorted(ours) == sorted(own(layout, scope, metadata)) and ours
        ours.clear()  # (a caller's change to its dict reaches no other)
        assert sorted(layout.get_entities(scope=scope, metadata=metadata)) == sorted(own(layout, scope, metadata))
    assert len(layout.__dict__["_voxfit_entities"]) == 5
    assert "RepetitionTime" in layout.get_entities("all", None)  # (a sidecar's: indexed after the files)
    elsewhere = bids.BIDSLayout(str(ds.root), validate=False)
    assert "_voxfit_entities" not in elsewhere.__dict__
    assert sorted(elsewhere.get_entities()) == sorted(own(elsewhere))


def test_a_layouts_files_are_read_once_per_query_with_pybids_own_answer(tmp_path):
    """pybids queries its database at every get (get_nearest gets every events file of the dataset for each run):
    wrapped, a layout voxfit has built keeps its answer per query by keyword and for the layouts then in its
    scope, in a list of each call's own; by position, or for a layout built elsewhere, pybids' own each time."""
    bids, own = _wrapped_once("get")
    ds, layout = _indexed(tmp_path, runs=2)
    asked = [
        {"suffix": "events", "extension": ".tsv"},
        {"suffix": ["regressors", "timeseries"], "extension": ".tsv", "scope": "derivatives", "subject": "01"},
        {"suffix": "bold", "scope": ["raw", "derivatives"], "return_type": "filename"},
        {"target": "subject", "return_type": "id"},
        {"suffix": "bold", "extension": [".nii", ".nii.gz"], "run": 2, "scope": "raw"},
    ]
    for query in asked * 2:
        ours = layout.get(**query)
        assert ours == own(layout, **query) and ours
        ours.clear()  # (a caller's change to its list reaches no other)
        assert layout.get(**query) == own(layout, **query)
    assert len(layout.__dict__["_voxfit_files"]) == len(asked)
    assert layout.get("filename", None, "raw", suffix="bold") == own(layout, "filename", None, "raw", suffix="bold")
    assert len(layout.__dict__["_voxfit_files"]) == len(asked)  # (by position: not kept)
    with pytest.raises(ValueError, match="return_type"):  # (a query pybids refuses: its own error, not kept)
        layout.get(suffix="bold", return_type="nonsense")
    assert len(layout.__dict__["_voxfit_files"]) == len(asked)
    elsewhere = bids.BIDSLayout(str(ds.root), validate=False)
    assert "_voxfit_files" not in elsewhere.__dict__
    assert elsewhere.get(suffix="events") == own(elsewhere, suffix="events")


def test_queries_whose_values_python_finds_equal_are_kept_apart(tmp_path):
    """1, 1.0 and True are one key to Python, but pybids asks for a subject "1", "1.0" or "True" (a reviewer's
    finding): each query is kept under its values' types."""
    from voxfit.bids.layout import index

    _, own = _wrapped_once("get")
    (tmp_path / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    for label in ("1", "True", "0", "False"):
        (tmp_path / f"sub-{label}" / "func").mkdir(parents=True)
        (tmp_path / f"sub-{label}" / "func" / f"sub-{label}_task-x_bold.nii.gz").write_bytes(b"")
    layout = index(tmp_path)
    for first, then in ((1, True), (1, 1.0), (0, False), ("1", 1)):
        for subject in (first, then):
            query = {"subject": subject, "suffix": "bold", "return_type": "filename"}
            assert layout.get(**query) == own(layout, **query), (first, then)


def test_a_study_leaves_no_answers_kept_for_its_layout(tmp_path):
    """pybids keeps layouts alive (its config's cache): a process that runs study after study would keep each
    one's files too; released, a layout keeps none."""
    from voxfit.bids.layout import release_index

    _, layout = _indexed(tmp_path, runs=1)
    layout.get(suffix="bold")
    built = [layout, *layout.derivatives.values()]
    built[1].get_entities()
    assert any(b.__dict__["_voxfit_files"] or b.__dict__["_voxfit_entities"] for b in built[1:])
    release_index(layout)
    assert not any(b.__dict__["_voxfit_files"] or b.__dict__["_voxfit_entities"] for b in built)
    release_index(None)


def test_a_released_layout_is_freed(tmp_path):
    """pybids' memoised properties (an lru_cache of 128 on the class: BIDSLayout.config, BIDSFile.relpath...) kept
    each layout alive, with its SQLite connection and its compiled queries, in a process that runs study after
    study (the API in a notebook; each worker of the test suite). Released, a layout and its derivatives' are freed
    once nothing else holds them."""
    from voxfit.bids.layout import release_index

    _, layout = _indexed(tmp_path, runs=1)
    assert layout.config and layout.get(suffix="bold")[0].relpath  # (each memoised on pybids' class)
    built = [weakref.ref(b) for b in (layout, *layout.derivatives.values())]
    release_index(layout)
    del layout
    gc.collect()
    assert [ref() for ref in built] == [None] * len(built)


def test_a_runs_nearest_tables_are_looked_for_among_its_subjects_files_with_pybids_own_answer(tmp_path, monkeypatch):
    """pybids' get_nearest(full_search=True) read every events file of the dataset for each run (a study's loading
    grew with the square of its runs): wrapped, pybids' own method is given the files of the run's subject and of
    none, and finds what it finds given all, in the same order (a table at the top of the dataset first: on the
    run's path); where the subject is not matched strictly, all."""
    from bids.layout.models import BIDSFile

    from voxfit.bids.layout import index
    from voxfit.bids.synthetic import make_dataset

    _, own = _wrapped_once("get_nearest")
    ds = make_dataset(tmp_path / "ds", subjects=2, runs=2, scans=20, shape=(6, 6, 5))
    inherited = ds.root / "task-stroop_events.tsv"  # (by every run)
    inherited.write_bytes(next(ds.root.glob("sub-*/func/*_events.tsv")).read_bytes())
    (ds.derivatives / "sub-02_task-stroop_events.tsv").write_bytes(inherited.read_bytes())
    layout = index(ds.root, [ds.derivatives])
    bolds = layout.get(scope="derivatives", suffix="bold", extension=".nii.gz", return_type="filename")
    events = {
        "extension": ".tsv",
        "suffix": "events",
        "full_search": True,
        "ignore_strict_entities": ["suffix", "extension"],
    }
    asked = [{**events, "all_": True}, events, {**events, "all_": True, "strict": False}]
    asked += [{**events, "all_": True, "ignore_strict_entities": ["subject", "suffix", "extension"]}]
    asked += [{"extension": ".tsv.gz", "suffix": ["physio", "stim"], "all_": True, "full_search": True}]
    # the first match alone: pybids looks in the first folder holding any file gotten, for sub-01's runs one with
    # sub-02's table alone, and finds none (a reviewer's finding)
    asked += [{"suffix": "events", "extension": ".tsv", "ignore_strict_entities": ["suffix", "extension"]}]
    for query in asked:
        for bold in bolds:
            ours = layout.get_nearest(bold, **query)
            assert ours == own(layout, bold, **query), query
    found = layout.get_nearest(bolds[0], **asked[0])
    assert found[0] == str(inherited) and len(found) == 2
    read = []
    dirname = BIDSFile._dirname
    monkeypatch.setattr(BIDSFile, "_dirname", property(lambda f: read.append(f) or dirname.fget(f)))
    layout.get_nearest(bolds[-1], **asked[0])
    assert bolds[-1].count("sub-02_") == 1 and len(read) == 2 + 2  # (sub-02's 2 runs' and its table; the top one)
    assert len(layout.get(suffix="events", extension=".tsv")) == 2 + 2 * 2


CELLS = [
    "1",
    " 3 ",
    "-2.5",
    "1e3",
    "+5",
    ".5",
    "1_000",
    "\u0661\u0662",
    "n/a",
    "NA",
    "",
    "inf",
    "nan",
    "abc",
    "0x10",
    "1,5",
    "\u00a019",  # (white space beside a number: ASCII is stripped by pandas, a no-break space is text to it)
    "19\u00a0",
    "\u20037",
    "\u30007",
    "\x1c7",
    "\x857",
    "\x0b7\x0c",
]


def test_a_participants_cell_is_a_number_before_the_fit_where_it_is_one_to_the_group_fit(tmp_path):
    """The check before any run is fitted (_check_participant_values) and the group fit (_numbers: pandas'
    to_numeric of the table pybids reads with pandas' read_csv) agree cell by cell: Python's float had taken
    ``1_000``, Arabic-Indic digits and numbers beside a no-break space (stripped as white space), which the group
    fit refused once every run was fitted. (A column of True and
    False alone, numbers to pandas, is words to the early check, which leaves such columns to the fit.)"""
    table = tmp_path / "participants.tsv"
    table.write_text("\t".join(f"c{k}" for k in range(len(CELLS))) + "\n" + "\t".join(CELLS) + "\n")
    read = pd.read_csv(table, sep="\t").apply(pd.to_numeric, errors="coerce").astype(float)  # (each cell a column)
    _, cells = _participants_rows([line.split("\t") for line in table.read_text().split("\n")])
    for k, cell in enumerate(CELLS):
        theirs = read[f"c{k}"].iloc[0]
        ours = _number(cells[k])
        assert (ours is None) == (not pd.notna(theirs) or abs(theirs) == float("inf")), cell
        assert ours is None or ours == theirs, cell


def test_a_cell_is_missing_where_pandas_reads_it_as_missing(tmp_path):
    """PANDAS_MISSING (a GroupBy or Model.X cell without a value, refused before any run is fitted) is the set of
    cells pandas' read_csv, and so pybids, reads as missing: "NULL", "None" or "#N/A" for a subject's group put the
    subject in every group (exit 0), and "na", a word to pandas, was refused as missing."""
    cells = sorted(PANDAS_MISSING - {""}) + ["na", "Null", "none", "N/a", "NAN", "group1", "0"]
    table = tmp_path / "participants.tsv"
    table.write_text("\t".join(f"c{k}" for k in range(len(cells))) + "\n" + "\t".join(cells) + "\n")
    missing = pd.read_csv(table, sep="\t").isna().iloc[0].tolist()
    assert missing == [cell in PANDAS_MISSING for cell in cells], dict(zip(cells, missing))


def test_a_failed_configuration_leaves_the_index_file_unlocked(tmp_path):
    """pybids' configurations written in one transaction: where one fails to load, what was flushed is rolled back,
    so that the database file is not left locked (a retry in the process waited 5 s and failed "database is
    locked" while the exception lived)."""
    _bids()
    init = {"root": "ROOT", "derivatives": None, "config": CONFIGS}
    bad = ["bids", str(tmp_path / "no.json")]
    with pytest.raises(ValueError) as failed:
        db.ConnectionManager(str(tmp_path / "db"), reset_database=True, config=bad, init_args=init)
    manager = db.ConnectionManager(str(tmp_path / "db"), reset_database=True, config=CONFIGS, init_args=init)
    assert manager.session.query(db.Config).count() == 2 and failed.value is not None

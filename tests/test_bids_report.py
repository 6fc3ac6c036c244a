"""voxfit bids --report: a page per subject, one for the dataset and index.html, from tiny synthetic BIDS studies
with fMRIPrep-style derivatives (several runs, sessions, CIFTI), broken runs planted; every link followed."""

from __future__ import annotations

import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("bids")
pytest.importorskip("matplotlib")

from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.cli import main  # noqa: E402
from voxfit.exceptions import InputError  # noqa: E402


class _Page(HTMLParser):
    """The hrefs, ids and text of a page."""

    def __init__(self, path: Path):
        super().__init__()
        self.hrefs, self.ids, self.words = [], set(), []
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])

    def handle_data(self, data):
        self.words.append(data)

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _broken_links(folder: Path) -> list[str]:
    """Every href of every page in `folder` that does not resolve: a file beside it, an id in the page named."""
    pages = {p.name: _Page(p) for p in folder.glob("*.html")}
    broken = []
    for name, page in pages.items():
        for href in page.hrefs:
            if href.startswith("data:"):
                continue
            target, _, fragment = href.partition("#")
            target = target or name
            if not (folder / target).is_file():
                broken.append(f"{name}: {href}")
            elif fragment and (target not in pages or fragment not in pages[target].ids):
                broken.append(f"{name}: {href}")
    return broken


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three subjects, two runs each, one condition; sub-02's second run with a confounds table three rows
    short, sub-03 without events (no run of it can be fitted): fitted to the dataset level with --report."""
    tmp = tmp_path_factory.mktemp("bidsreport")
    ds = make_dataset(tmp / "ds", subjects=3, runs=2, conditions=("congruent",))
    short = ds.derivatives / "sub-02" / "func" / "sub-02_task-stroop_run-2_desc-confounds_timeseries.tsv"
    short.write_text("\n".join(short.read_text().splitlines()[:-3]) + "\n")
    for events in (ds.root / "sub-03" / "func").glob("*_events.tsv"):
        events.unlink()
    out = tmp / "out"
    argv = ["bids", str(ds.root), str(out), "dataset", "--derivatives", str(ds.derivatives), "--quiet", "--report"]
    code = main(argv)
    return ds, out, code, argv, short


def test_pages_exist_and_every_link_resolves(study):
    ds, out, code, _, _ = study
    assert code == 2  # failures planted: the study says so, the reports are written all the same
    names = {p.name for p in out.glob("*.html")}
    assert names == {"index.html", "dataset.html", "sub-01.html", "sub-02.html", "sub-03.html"}
    assert not _broken_links(out)
    index = _Page(out / "index.html")
    linked = {h for h in index.hrefs if h.endswith(".html")}
    assert linked == names - {"index.html"}
    assert any(h.endswith("_smdl.json") for h in index.hrefs)
    for page in names - {"index.html"}:
        assert "index.html" in _Page(out / page).hrefs


def test_pages_name_every_subject_contrast_and_setting(study):
    ds, out, *_ = study
    index = _Page(out / "index.html").text
    assert all(f"sub-{s}" in index for s in ds.subjects)
    assert re.search(r"\brun\b.*\bsubject\b.*\bdataset\b", index, re.S)  # the nodes, in the model's order
    for s in ("01", "02"):
        page = (out / f"sub-{s}.html").read_text()
        text = _Page(out / f"sub-{s}.html").text
        assert "Contrast congruent" in text and "Subject node subject" in text
        assert "Expression: <code>congruent</code>" in page  # (the run node's weights [1, 0, 0], by name)
        assert "run-1" in text and (s == "02" or "run-2" in text)
        assert page.count("data:image/png") >= 5  # design matrices, slices of the z maps
        for setting in ("noise model ar1", "spm: congruent", "128 s", "smoothing"):
            assert setting in text
    dataset = _Page(out / "dataset.html").text
    assert "Contrast congruent" in dataset and "Group design" in dataset and "mixed" in dataset
    assert "between-subject variance" in dataset


def test_planted_failures_are_listed_where_they_belong(study):
    ds, out, _, _, short = study
    sub2 = _Page(out / "sub-02.html").text
    sub3 = _Page(out / "sub-03.html").text
    assert str(short) in sub2 and "run-2" in sub2
    assert "events" in sub3 and "Failures (2)" in sub3  # both of its runs, though nothing of it was fitted
    assert str(short) not in (out / "sub-01.html").read_text()
    index = _Page(out / "index.html").text
    assert "Failures (3)" in index and str(short) in index
    dataset = _Page(out / "dataset.html").text
    assert re.search(r"sub-01, sub-02 .*sub-03 \(run:", dataset, re.S)  # used; left out, with why


def test_rerun_rebuilds_only_pages_whose_inputs_changed(study):
    from voxfit.bids.report import write_study_reports

    ds, out, _, argv, _ = study
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.html")}
    assert main(argv) == 2  # every node skipped, the same failures
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.html")} == stamps
    run_map = next((out / "sub-01" / "node-run").glob("*run-2*contrast-congruent_stat-z_statmap.nii.gz"))
    os.utime(run_map)
    again = write_study_reports(out, progress=False)  # from the disk alone, failures as the study left them
    assert [p.name for p in again.built] == ["sub-01.html"]
    assert "Failures (3)" in _Page(out / "index.html").text
    assert not list(out.rglob("*.tmp*")) and not list(out.glob(".voxfit-*"))


def test_a_group_map_edited_after_the_study_is_refused_not_drawn(study, tmp_path):
    """A group's z map replaced by another run's (copied over it after the study): each group record holds the
    BLAKE3 digest of every file the study wrote for it, and its section of the subject's page says the map is
    not the one the study wrote instead of drawing it (it had been drawn and tabled beside the group's own t and
    p); the other groups are drawn."""
    import shutil

    from voxfit.bids.report import write_study_reports

    ds, out, _, _, _ = study
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    maps = sorted((copy / "sub-01" / "node-run").glob("*contrast-congruent_stat-z_statmap.nii.gz"))
    shutil.copy(maps[1], maps[0])
    for page in copy.glob("*.html"):
        page.unlink()
    write_study_reports(copy, progress=False)
    text = _Page(copy / "sub-01.html").text
    assert text.count("is not the file the fit wrote") == 1 and maps[0].name in text
    assert "orthogonal slices" in (copy / "sub-01.html").read_text()  # (the other run's group)


def test_a_rerun_without_report_removes_the_earlier_pages(study, tmp_path):
    """A rerun into the same folder without --report kept the earlier study's pages, which went on describing
    fits the rerun replaced ("permutations 200, TFCE yes" beside records without them). Files that are not
    voxfit's pages stay."""
    import shutil

    ds, out, _, argv, _ = study
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "notes.html").write_text("<p>the user's own</p>")
    rerun = [str(copy) if a == str(out) else a for a in argv if a != "--report"]
    assert main(rerun) == 2  # (the same planted failures)
    assert sorted(p.name for p in copy.glob("*.html")) == ["notes.html"]


def test_sessions_and_cifti_without_a_dataset_node(tmp_path):
    from voxfit.bids import run
    from voxfit.bids.report import write_study_reports

    ds = make_dataset(
        tmp_path / "ds", subjects=1, runs=1, space="fsLR", sessions=("a", "b"), vertices=30, conditions=("go",)
    )
    out = tmp_path / "out"
    result = run(ds.root, out, derivatives=[ds.derivatives], level="subject", report=True, progress=False)
    assert result.ok
    assert {p.name for p in out.glob("*.html")} == {"index.html", "sub-01.html"}
    assert not _broken_links(out)
    text = _Page(out / "sub-01.html").text
    assert "Session node session: ses-a" in text and "Session node session: ses-b" in text
    assert "Structures" in text and "CORTEX_LEFT" in text  # CIFTI: its structures, as voxfit's report lists them
    assert write_study_reports(out, progress=False).built == ()


def test_a_gifti_studys_pages_say_what_each_hemispheres_corrections_cover_and_point_to_no_mesh_option(tmp_path):
    """A study's report takes no mesh: its page told users to give `voxfit report --mesh`, which refuses a study's
    folders. Each hemisphere is corrected on its own, and the page says so."""
    from voxfit.bids import run

    ds = make_dataset(tmp_path / "ds", subjects=3, runs=1, space="fsaverage5", vertices=40, conditions=("go",))
    out = tmp_path / "out"
    assert run(ds.root, out, derivatives=[ds.derivatives], report=True, progress=False).ok
    text = _Page(out / "dataset.html").text
    assert "No surface mesh is drawn on in a study's report" in text and "--mesh" not in text
    for side in ("left", "right"):
        assert f"is over the 40 vertices of this {side} hemisphere alone" in text


def test_without_matplotlib_one_line_and_nothing_fitted(tmp_path, monkeypatch, capsys):
    from voxfit.bids.report import write_study_reports

    ds = make_dataset(tmp_path / "ds", subjects=1, runs=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["bids", str(ds.root), str(tmp_path / "out"), "run", "--derivatives", str(ds.derivatives), "--report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'voxfit[report]'" in err[0]
    assert not list(tmp_path.glob("out/sub-*"))
    with pytest.raises(InputError, match="matplotlib"):
        write_study_reports(tmp_path)


def test_bad_output_folders_are_refused_in_one_sentence(tmp_path):
    from voxfit.bids.report import write_study_reports

    with pytest.raises(InputError, match="not a folder"):
        write_study_reports(tmp_path / "absent")
    with pytest.raises(InputError, match="holds no node records"):
        write_study_reports(tmp_path)
    (tmp_path / "node-dataset").mkdir()
    (tmp_path / ".voxfit").mkdir()
    (tmp_path / ".voxfit" / "failures.json").write_text(json.dumps({"failures": [{"node": "run"}]}))
    with pytest.raises(InputError, match="failures.json"):
        write_study_reports(tmp_path)

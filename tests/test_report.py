"""HTML reports: built from finished output folders of volumes, surfaces, CIFTI, arrays, runs and groups;
every embedded image decodes; the page renders in headless Chromium; bad inputs are refused cleanly."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from voxfit.cli import main

from .helpers import reseal
from .imaging import AFFINE, write_cifti, write_cifti_runs, write_gifti, write_icosahedron

pytest.importorskip("matplotlib")
from PIL import Image  # Pillow comes with matplotlib

N = 40
SHAPE = (10, 9, 8)


def _design(folder, n=N):
    t = np.arange(n)
    rows = ["A\tB\tdrift1\tconstant"]
    for i in t:
        rows.append(
            f"{float(i % 10 < 5)}\t{float((i + 5) % 10 < 5) * 0.5 + 0.1 * np.sin(i)}\t"
            f"{np.cos(np.pi * (i + 0.5) / n)}\t1"
        )
    path = folder / "design.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path, np.loadtxt(path, skiprows=1)


def _volume(folder, rng):
    """A 4-D .nii.gz with an A effect in one corner (positive) and another (negative)."""
    _, X = _design(folder)
    data = 100 + rng.standard_normal(SHAPE + (N,))
    data[1:4, 1:4, 1:4] += 6 * X[:, 0]
    data[6:9, 5:8, 4:7] -= 6 * X[:, 0]
    data[0] = 0.0  # outside the brain
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), folder / "bold.nii.gz")
    return folder / "bold.nii.gz"


def _images(page: str) -> list[tuple[str, Image.Image]]:
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    out = []
    for alt, data in found:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()  # decodes every pixel: raises on a damaged PNG
        out.append((alt, img))
    return out


def _check_page(path, *expected_alts):
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline, nothing fetched
    images = _images(page)
    assert len(images) == page.count("<img ")
    for alt, img in images:
        assert img.size[0] > 50 and img.size[1] > 20, alt
        assert img.convert("RGB").getcolors(2) is None, f"{alt} is blank"  # (None: more than 2 colours)
    alts = " | ".join(alt for alt, _ in images)
    for want in expected_alts:
        assert want in alts, (want, alts)
    return page


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """One first-level run with its report, shared by the tests: those that draw it with other options draw a copy,
    so that the shared report is the fit's own whatever order the tests run in."""
    folder = tmp_path_factory.mktemp("volume")
    rng = np.random.default_rng(0)
    bold = _volume(folder, rng)
    design, _ = _design(folder)
    out = folder / "res"
    assert (
        main(
            [
                "fit",
                str(bold),
                "--design",
                str(design),
                "--contrast",
                "a=A",
                "--contrast",
                "eoi=A; B",
                "--noise",
                "ar1",
                "-o",
                str(out),
                "--report",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def test_volume_report(volume_run):
    from scipy.special import ndtri

    page = _check_page(
        volume_run / "report.html",
        "Design matrix",
        "correlation matrix",
        "contrast a weights",
        "orthogonal slices",
        "axial mosaic",
        "contrast eoi weights",
    )
    # the page a run's --report writes names the output folder, not the hidden one it was written in
    assert "<title>voxfit report: first level, res</title>" in page and ".voxfit-partial" not in page
    assert f"<td>{volume_run.resolve()}</td>" in page
    # SPM's default for every contrast, t and F: one-sided p < 0.001 uncorrected (z > 3.09); t contrasts show
    # their positive tail; the counts are those of the z maps
    level = -ndtri(0.001)
    assert (
        "p &lt; 0.001 uncorrected, one-sided (the positive tail of the t contrast, as SPM shows it: z &gt; 3.09)"
        in page
    )
    assert (
        "p &lt; 0.001 uncorrected, one-sided (z &gt; 3.09): SPM&#x27;s default height threshold for each contrast"
        in page
    )
    assert "|z| &gt; 3.29" not in page and "two-sided" not in page
    mask = nib.load(volume_run / "mask.nii.gz").get_fdata() > 0
    for label in ("a", "eoi"):
        z = nib.load(volume_run / f"contrast-{label}_stat-z_statmap.nii.gz").get_fdata()[mask]
        p = nib.load(volume_run / f"contrast-{label}_stat-p_statmap.nii.gz").get_fdata()[mask]
        assert np.sum(z > level) > 0
        assert f"{np.sum(z > level):,} of {mask.sum():,} elements shown." in page
        assert f"{np.sum(p < 0.05 / mask.sum()):,} reach Bonferroni p &lt; 0.05, both one-sided" in page
    z = nib.load(volume_run / "contrast-a_stat-z_statmap.nii.gz").get_fdata()[mask]
    assert np.sum(z < -level) > 0  # the planted negative effect: counted, not shown
    assert f"{np.sum(z < -level):,} elements have z &lt; −3.09 (the negative tail, not shown" in page
    assert "Variance inflation" in page and "Clusters (26-connected)" in page
    assert f"{N} scans × {mask.sum():,} elements" in page and "&#x27;eoi=A; B&#x27;" in page  # the command, quoted
    # the planted positive effect is the largest cluster of contrast a, 27 voxels at most; its peak's t, z, p
    a = page[page.index("id='contrast-a'") : page.index("id='contrast-eoi'")]
    first = re.search(
        r"<tr><td class=n>1</td><td class=n>(\d+)</td><td class=n>[\d.]+</td>"
        r"<td class=n>([\d.]+)</td><td class=n>([\d.]+)</td>",
        a,
    )
    assert first and 20 <= int(first.group(1)) <= 27
    t = nib.load(volume_run / "contrast-a_stat-t_statmap.nii.gz").get_fdata()[mask]
    assert float(first.group(2)) == pytest.approx(t.max(), abs=1e-3) and float(first.group(3)) == pytest.approx(
        z.max(), abs=1e-3
    )
    # the slices go through the global maximum of the shown z map
    where = re.search(r"global maximum of the shown map: z = ([\d.]+) at \((-?\d+), (-?\d+), (-?\d+)\) mm", a)
    z_grid = nib.load(volume_run / "contrast-a_stat-z_statmap.nii.gz").get_fdata()
    top = np.unravel_index(np.argmax(np.where(mask, z_grid, -np.inf)), mask.shape)
    assert float(where.group(1)) == pytest.approx(z_grid[top], abs=5e-3)
    assert [int(v) for v in where.groups()[1:]] == [round(v) for v in AFFINE[:3, :3] @ top + AFFINE[:3, 3]]
    # the table as TSV (embedded): every maximum's t, z and p are the maps' values at its voxel
    assert "download='contrast-a_maxima.tsv'" in a
    rows = _embedded_tsv(a)
    assert rows and [r["cluster"] for r in rows] == sorted(r["cluster"] for r in rows)
    maps = {k: nib.load(volume_run / f"contrast-a_stat-{k}_statmap.nii.gz").get_fdata() for k in ("t", "z", "p")}
    for r in rows:
        ijk = tuple(int(v) for v in r["i j k"].split())
        assert float(r["t"]) == pytest.approx(maps["t"][ijk], abs=1e-3) and float(r["z"]) == pytest.approx(
            maps["z"][ijk], abs=1e-3
        )
        assert float(r["p unc."]) == pytest.approx(maps["p"][ijk], rel=1e-5) and 0 < float(r["q FDR"]) <= 1
    model = json.loads((volume_run / "model.json").read_text())
    assert model["run"]["peak_memory_mib"] > 0 and model["run"]["fit_s"] >= 0
    assert "peak memory (MiB)" in page and "voxfit version" in page
    # settings as tables: nested settings in a table of their own, no JSON
    settings = page[page.index("id='settings'") :]
    assert "<th>noise_details</th><td><table class='settings'><tr><th>model</th><td>AR(1) per voxel</td>" in settings
    assert "<th>affine</th><td>2, 0, 0, -6<br>" in settings
    assert not re.search(r"[{\[]\s*&quot;|&quot;\s*:|\[\[|\{&#x27;", settings) and "{&quot;" not in settings


def _embedded_tsv(page: str) -> list[dict]:
    import csv

    data = re.search(r"href='data:text/tab-separated-values;base64,([^']+)'", page).group(1)
    return list(csv.DictReader(io.StringIO(base64.b64decode(data).decode()), delimiter="\t"))


def test_rebuilt_from_the_folder_without_refitting(volume_run, capsys, monkeypatch):
    import sys

    assert main(["report", str(volume_run)]) == 2  # exists: needs --force
    assert "pass --force" in capsys.readouterr().err
    for module, name in (("voxfit.engine.fit", "fit"), ("voxfit.engine.ar", "fit_ar")):
        monkeypatch.setattr(sys.modules[module], name, lambda *a, **k: pytest.fail("refitted"))
    assert main(["report", str(volume_run), "--force", "--quiet"]) == 0
    first = (volume_run / "report.html").read_text()
    assert main(["report", str(volume_run), "--force", "--quiet"]) == 0
    again = (volume_run / "report.html").read_text()
    strip = re.compile(r"report made</th><td>[^<]*")
    assert strip.sub("", first) == strip.sub("", again)


@pytest.mark.planted_model_json  # (a record of version 1)
def test_a_folder_of_record_version_1_shows_its_sha256s(volume_run, tmp_path):
    """A folder written before the records' digests were BLAKE3 (record version 1, ``sha256``) is reported
    with its own digests, under their name."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(volume_run, old)
    raw = json.loads((old / "model.json").read_text())
    raw["record_version"] = 1
    raw["inputs"] = [{"path": i["path"], "bytes": i["bytes"], "sha256": "ab" * 32} for i in raw["inputs"]]
    del raw["record_blake3"], raw["outputs"]  # (version 1 wrote neither)
    (old / "model.json").write_text(json.dumps(raw))
    assert main(["report", str(old), "--force", "--quiet"]) == 0
    page = (old / "report.html").read_text()
    assert "<th>sha256</th>" in page and "ab" * 32 in page and "blake3" not in page
    assert "<th>blake3</th>" in (volume_run / "report.html").read_text()


def test_background_and_threshold_options(volume_run, tmp_path, capsys):
    t1 = np.zeros((20, 18, 16), dtype=np.float32)
    t1[2:18, 2:16, 2:14] = 500.0
    fine = AFFINE.copy()
    fine[:3, :3] /= 2
    nib.save(nib.Nifti1Image(t1, fine), tmp_path / "t1.nii.gz")
    folder = shutil.copytree(volume_run, tmp_path / "run")  # (the shared report stays drawn over the mean image)
    assert (
        main(
            [
                "report",
                str(folder),
                "--background",
                str(tmp_path / "t1.nii.gz"),
                "--p-threshold",
                "0.05",
                "--force",
                "--quiet",
            ]
        )
        == 0
    )
    page = _check_page(folder / "report.html", "orthogonal slices")
    assert "t1.nii.gz, resampled" in page and "p &lt; 0.05 uncorrected" in page
    # backgrounds whose vox_offset lies in the header (100: nibabel refuses it; 0: nibabel reads the header as data)
    # are read as the fits read them, from byte 352, with one warning: drawn as the file written right is
    nib.save(nib.Nifti1Image(t1, fine), tmp_path / "right.nii")
    drawn = {}
    for name, offset in (("right.nii", None), ("t1.nii", 100.0), ("zero.nii", 0.0)):
        raw = bytearray((tmp_path / "right.nii").read_bytes())
        if offset is not None:
            raw[108:112] = np.array([offset], "<f4").tobytes()
        (tmp_path / name).write_bytes(bytes(raw))
        capsys.readouterr()
        assert main(["report", str(folder), "--background", str(tmp_path / name), "--force"]) == 0
        said = capsys.readouterr().err
        assert offset is None or said.count(f"{name}: ") == 1 and f"{offset:g}" in said, said
        page = _check_page(folder / "report.html", "orthogonal slices")
        assert f"{name}, resampled" in page
        drawn[name] = [img.tobytes() for alt, img in _images(page) if "orthogonal slices" in alt]
    assert drawn["t1.nii"] == drawn["right.nii"] == drawn["zero.nii"]
    # a 4-D .nii.gz with its data at 348 (where niftilib reads them): its first volume alone fits from 352, one
    # value off; its whole stream, too short for that, is read to say so
    four = np.repeat(t1[..., None], 3, axis=3) + np.arange(3, dtype=np.float32)
    nib.save(nib.Nifti1Image(four, fine), tmp_path / "four.nii")
    raw = (tmp_path / "four.nii").read_bytes()
    (tmp_path / "early.nii.gz").write_bytes(gzip.compress(raw[:108] + bytes(4) + raw[112:348] + raw[352:]))
    capsys.readouterr()
    assert main(["report", str(folder), "--background", str(tmp_path / "early.nii.gz"), "--force"]) == 2
    assert re.search(r"early\.nii\.gz: its vox_offset is 0, inside its 352-byte header", capsys.readouterr().err)
    # what is no anatomy of the maps is refused in one line: a CIFTI file (was exit 1), a surface (Python's words),
    # and a volume 500 mm away (drawn blank, said to be drawn over, exit 0)
    far = fine.copy()
    far[:3, 3] += 500.0
    nib.save(nib.Nifti1Image(t1, far), tmp_path / "far.nii.gz")
    write_icosahedron(tmp_path / "lh.surf.gii")
    write_cifti(tmp_path / "run.dtseries.nii", np.ones((3, 27)))
    for name, said in (
        ("run.dtseries.nii", "is a CIFTI file, not a volume"),
        ("lh.surf.gii", "is not a 3-D volume"),
        ("far.nii.gz", "does not overlap the maps"),
    ):
        assert main(["report", str(folder), "--background", str(tmp_path / name), "--force"]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err


def test_nothing_to_show(volume_run, tmp_path):
    """No element past the threshold, or a map without a finite value: said, and no empty figures."""
    above = shutil.copytree(volume_run, tmp_path / "above")  # (the shared report keeps its threshold)
    assert main(["report", str(above), "--p-threshold", "1e-300", "--force", "--quiet"]) == 0
    page = _check_page(above / "report.html", "Design matrix")
    assert (
        page.count("No element passes the threshold (largest z: ") == 2
        and "no slices, views or table of maxima" in page
    )
    assert "orthogonal slices" not in page and "Clusters (26" not in page
    folder = shutil.copytree(volume_run, tmp_path / "nan")
    z = nib.load(folder / "contrast-a_stat-z_statmap.nii.gz")
    nib.save(
        nib.Nifti1Image(np.full(z.shape, np.nan, np.float32), z.affine), folder / "contrast-a_stat-z_statmap.nii.gz"
    )
    reseal(folder)
    assert main(["report", str(folder), "--force", "--quiet"]) == 0
    page = _check_page(folder / "report.html", "contrast a weights", "orthogonal slices")
    assert "The z map holds no finite value in the mask: nothing to show." in page
    assert page.count("orthogonal slices") == 1  # the F contrast's only


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--p-threshold", "1.5"], "between 0 and 1"),
        (["--background", "missing.nii.gz"], "background image"),
        # (a volume report passed a mesh over, as the CIFTI one did: refused, as voxfit fit and group refuse it)
        (["--mesh", "missing.surf.gii"], "--mesh draws GIFTI surface maps, and these maps are volumes; leave it out"),
    ],
)
def test_bad_report_options(volume_run, capsys, extra, message):
    before = (volume_run / "report.html").read_bytes()
    code = main(["report", str(volume_run), "--force", "--quiet", *extra])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert (volume_run / "report.html").read_bytes() == before  # untouched
    assert not list(volume_run.glob(".report*"))


def test_not_an_output_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no model.json" in capsys.readouterr().err
    (tmp_path / "model.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.planted_model_json  # (records edited by hand)
@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda c: {**c, "a": "x"}, "its contrasts are not records of contrasts"),
        (lambda c: {**c, "a": {**c["a"], "weights": "abc"}}, "the weights of contrast 'a' are not numbers"),
    ],
)
def test_an_edited_record_of_the_contrasts_is_refused_in_one_line(volume_run, tmp_path, capsys, edit, said):
    """A model.json whose contrasts were edited into what no fit writes: exit 1 (AttributeError, ValueError).
    (Without its digest of itself, as records written before it: one with it is refused as edited.)"""
    folder = shutil.copytree(volume_run, tmp_path / "edited")
    record = json.loads((folder / "model.json").read_text())
    del record["record_blake3"]
    (folder / "model.json").write_text(json.dumps({**record, "contrasts": edit(record["contrasts"])}))
    assert main(["report", str(folder), "--force"]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err


def _edit_record(key, value):
    def edit(folder):
        record = json.loads((folder / "model.json").read_text())
        parent, *path = key.split(".")
        target = record
        for part in [parent, *path][:-1]:
            target = target[part]
        target[([parent, *path])[-1]] = value
        (folder / "model.json").write_text(json.dumps(record, indent=1))

    return edit


def _copy_map(source, target):
    return lambda folder: shutil.copy(folder / source, folder / target)


@pytest.mark.planted_model_json  # (records edited by hand)
@pytest.mark.parametrize(
    ("tamper", "refused"),
    [
        (_edit_record("design.tr", "abc"), "model.json was edited after voxfit wrote it"),
        (_edit_record("design.kinds", 5), "model.json was edited after voxfit wrote it"),
        (_edit_record("command", [1, None, {}]), "model.json was edited after voxfit wrote it"),
        (_edit_record("inputs", ["a", "b"]), "model.json was edited after voxfit wrote it"),
        (_edit_record("design.columns", ["a"]), "model.json was edited after voxfit wrote it"),
        (_copy_map("contrast-eoi_stat-z_statmap.nii.gz", "contrast-a_stat-z_statmap.nii.gz"), "contrast-a_stat-z_"),
        (_copy_map("contrast-a_stat-z_statmap.nii.gz", "stat-mean_statmap.nii.gz"), "stat-mean_statmap.nii.gz is not"),
        (
            lambda f: (f / "design.tsv").write_text("\n".join((f / "design.tsv").read_text().splitlines()[:11])),
            "design",
        ),
        (lambda f: (f / "design.tsv").unlink(), "lacks design.tsv, which the fit wrote"),
    ],
)
def test_a_folder_edited_after_its_fit_is_refused_not_reported(volume_run, tmp_path, capsys, tamper, refused):
    """A report draws what the fit wrote or nothing: model.json edited by hand (a field's type, which had ended
    the report with exit 1 (TypeError, ValueError, AttributeError) in 16 ways, or a value: the design's columns
    named beside another design's figure), a map of another contrast copied over a contrast's (its z drawn and
    tabled beside the other's t: t -0.61 with z 3.36), design.tsv cut short (the page said 10 scans of 40) or
    removed: refused in one line, exit 2, no page. The record holds the BLAKE3 digest of every file the fit wrote
    and of its own content, both checked here with the ``blake3`` package."""
    import blake3

    folder = shutil.copytree(volume_run, tmp_path / "edited")
    (folder / "report.html").unlink()
    record = json.loads((folder / "model.json").read_text())
    seal = record.pop("record_blake3")
    assert seal == blake3.blake3(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert {name for name in record["outputs"]} >= {"design.tsv", "mask.nii.gz", "contrast-a_stat-z_statmap.nii.gz"}
    for name, digest in record["outputs"].items():
        assert blake3.blake3((folder / name).read_bytes()).hexdigest() == digest, name
    tamper(folder)
    assert main(["report", str(folder), "--force"]) == 2
    err = capsys.readouterr().err
    assert refused in err and err.count("\n") == 1 and "rerun the fit" in err, err
    assert not (folder / "report.html").exists()


@pytest.mark.planted_model_json
@pytest.mark.parametrize(
    "tamper, said",
    [
        (lambda text: "\n".join(text.splitlines()[:11]) + "\n", "holds 10 rows where its fit's design had 40 rows"),
        (lambda text: text.replace("A", "Z", 1), "holds the columns Z"),
    ],
)
@pytest.mark.parametrize("runs", [1, 2])
def test_a_design_changed_after_a_record_without_digests_is_refused(volume_run, tmp_path, capsys, tamper, said, runs):
    """Records written before voxfit kept its files' digests (no ``outputs``, no seal) are read as they were, but
    their design.tsv cut short or renamed was drawn without a word (a tester's: the page said 10 scans of 40). The
    record's own design (its rows and columns) is checked against the file; a fit of several runs' too, whose
    records name a run's rows n_scans (a reviewer's: its run-1_design.tsv cut short was drawn)."""
    folder, design = shutil.copytree(volume_run, tmp_path / "old"), "design.tsv"
    if runs == 2:
        table, _ = _design(tmp_path)
        bold = _volume(tmp_path, np.random.default_rng(1))
        (tmp_path / "2").mkdir()
        second = _volume(tmp_path / "2", np.random.default_rng(2))
        argv = ["fit", str(bold), str(second), "--design", str(table), str(table), "--contrast", "a=A"]
        assert main([*argv, "-o", str(folder), "--force", "--quiet"]) == 0
        design = "run-1_design.tsv"
    (folder / "report.html").unlink(missing_ok=True)
    record = json.loads((folder / "model.json").read_text())
    del record["outputs"], record["record_blake3"]
    (folder / "model.json").write_text(json.dumps(record))
    assert main(["report", str(folder), "--force", "--quiet"]) == 0  # (as it was written: read as before)
    (folder / design).write_text(tamper((folder / design).read_text()))
    assert main(["report", str(folder), "--force"]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and "rerun the fit" in err, err


def test_a_report_reads_only_its_own_fits_files_where_force_kept_an_earlier_fits(tmp_path):
    """A NIfTI fit written with --force over a GIFTI fit's folder keeps the GIFTI fit's mask.func.gii beside its own
    mask.nii.gz; the report took the first mask by name, the GIFTI one, and reported the surface under the NIfTI
    fit's record (exit 0). Its record's outputs name the files it wrote: the report reads those alone."""
    from voxfit.report._results import read_results

    rng = np.random.default_rng(4)
    design, X = _design(tmp_path)
    write_gifti(tmp_path / "s.func.gii", (100 + rng.standard_normal((N, 50)) + 3 * X[:, :1]).astype(np.float32))
    out = tmp_path / "out"
    argv = ["--design", str(design), "--contrast", "a=A", "-o", str(out), "--quiet"]
    assert main(["fit", str(tmp_path / "s.func.gii"), *argv]) == 0
    assert main(["fit", str(_volume(tmp_path, rng)), *argv, "--force"]) == 0
    assert (out / "mask.func.gii").is_file() and (out / "mask.nii.gz").is_file()
    res = read_results(out)
    assert res.extension == ".nii.gz" and res.geometry.kind == "volume"
    assert main(["report", str(out), "--quiet"]) == 0


def test_the_fdr_note_counts_the_elements_its_q_values_count(tmp_path):
    """A constant series in the mask has no p value, and Benjamini-Hochberg's m counts the elements that have one
    (the q of the peak is p x 382, not p x 384): the note said the mask's 384."""
    rng = np.random.default_rng(1)
    design, X = _design(tmp_path)
    data = 100 + rng.standard_normal(SHAPE + (N,))
    data[2, 2, 2] = 100.0
    data[3, 3, 3] = 50.0
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), tmp_path / "bold.nii.gz")
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE), mask)
    out = tmp_path / "o"
    argv = ["fit", str(tmp_path / "bold.nii.gz"), "--design", str(design), "--mask", str(mask), "--contrast", "a=A"]
    assert main([*argv, "--noise", "ols", "-o", str(out), "--report", "--quiet"]) == 0
    p = np.asarray(nib.load(out / "contrast-a_stat-p_statmap.nii.gz").dataobj)
    assert int(np.isnan(p).sum()) == 2
    page = (out / "report.html").read_text()
    n = int(np.prod(SHAPE))
    assert f"FDR over the {n - 2:,} elements of the mask with a p value (2 of its {n:,} have none)" in page


def test_without_matplotlib_the_fit_is_not_run(tmp_path, capsys, monkeypatch):
    import importlib.util

    rng = np.random.default_rng(1)
    bold = _volume(tmp_path, rng)
    design, _ = _design(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code = main(["fit", str(bold), "--design", str(design), "--contrast", "a=A", "-o", str(tmp_path / "o"), "--report"])
    assert code == 2 and "pip install 'voxfit[report]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_volume_group_with_covariates_in_ras_and_las(tmp_path):
    """Two blobs touching at a corner: the report's clusters are formed as the run's (6-connectivity, not
    one 26-connected cluster); the same figures and mm from a RAS and a LAS copy of the maps; covariates as
    regressors of interest; parametric inference shown at Bonferroni (FWE), the strongest computed."""
    rng = np.random.default_rng(5)
    maps = rng.standard_normal((10,) + SHAPE)
    maps[:, 2:4, 2:4, 2:4] += 4.0
    maps[:, 4:6, 4:6, 4:6] += 4.0
    las = AFFINE @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    table = tmp_path / "participants.tsv"
    table.write_text(
        "intercept\tage\tiq\n" + "".join(f"1\t{a:.3f}\t{b:.3f}\n" for a, b in rng.standard_normal((10, 2)))
    )
    pages = []
    for name, affine, flip in (("ras", AFFINE, slice(None)), ("las", las, slice(None, None, -1))):
        paths = [tmp_path / f"{name}{i}.nii.gz" for i in range(10)]
        for path, m in zip(paths, maps):
            nib.save(nib.Nifti1Image(m[flip].astype(np.float32), affine), path)
        out = tmp_path / name
        assert (
            main(
                [
                    "group",
                    *map(str, paths),
                    "--design",
                    str(table),
                    "--contrast",
                    "mean=intercept",
                    "--contrast",
                    "age=age",
                    "-o",
                    str(out),
                    "--report",
                    "--quiet",
                ]
            )
            == 0
        )
        pages.append(_check_page(out / "report.html", "correlation matrix", "orthogonal slices"))
    ras, las_page = pages
    assert (
        "10 maps × " in ras
        and "Clusters (6-connected)" in ras
        and "<td>age</td><td class=n>" in ras
        and "<td>iq</td>" in ras
    )
    assert "family-wise error p &lt; 0.05 (Bonferroni)" in ras and "No element passes the threshold (largest t: " in ras
    sizes = re.findall(r"<tr><td class=n>\d+</td><td class=n>(\d+)</td>", ras)
    assert sizes[:2] == ["8", "8"]
    assert [img.tobytes() for _, img in _images(ras)] == [img.tobytes() for _, img in _images(las_page)]
    mm = re.compile(r"x mm</th><th>y mm</th><th>z mm</th>.*?</tr><tr>(.*?)</tr>")
    assert re.sub(r"\d+ \d+ \d+", "", mm.search(ras).group(1)) == re.sub(
        r"\d+ \d+ \d+", "", mm.search(las_page).group(1)
    )


def test_slices_cut_through_the_global_maximum():
    """The slices go through the shown map's largest value, here a lone voxel, not the largest cluster's peak;
    the page says so and names its cluster."""
    from voxfit.io.geometry import VolumeGeometry
    from voxfit.report._page import _Volume, _volume_part
    from voxfit.report._results import Threshold

    stat = np.zeros(SHAPE)
    stat[1:4, 1:4, 1:4] = 5.0
    stat[2, 2, 2] = 6.0
    stat[8, 7, 6] = 9.0  # stronger, alone
    flat = stat.reshape(-1, order="F")
    th = Threshold(flat > 3, flat, "z", 3.0, "test", columns={"z": flat})
    page = _volume_part(_Volume(VolumeGeometry(SHAPE, AFFINE)), np.ones(SHAPE), th, np.ones(flat.size, bool), 26)
    x, y, z = (round(float(v), 1) for v in AFFINE[:3, :3] @ [8, 7, 6] + AFFINE[:3, 3])  # (the table's 0.1 mm)
    assert f"orthogonal slices through ({x:g}, {y:g}, {z:g}) mm" in page
    assert f"through the global maximum of the shown map: z = 9 at ({x:g}, {y:g}, {z:g}) mm, in cluster 2." in page
    assert re.findall(r"<tr><td class=n>(\d)</td><td class=n>(\d+)</td>", page) == [("1", "27"), ("2", "1")]


@pytest.mark.parametrize("flip", [False, True])
def test_oblique_grid_drawn_along_it_with_exact_mm(flip):
    from voxfit.io.geometry import VolumeGeometry
    from voxfit.report._page import _Volume

    angle = np.radians(25)
    affine = AFFINE.copy()
    affine[:3, :3] = (
        np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]) @ AFFINE[:3, :3]
    )
    if flip:  # x stored right to left
        affine = affine @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    vol = _Volume(VolumeGeometry(SHAPE, affine))
    assert vol.obliquity == pytest.approx(25.0)
    values = np.arange(np.prod(SHAPE))  # element e sits at voxel unravel(e) of the stored grid
    grid = vol.grid(values)
    for ijk in [(0, 0, 0), (7, 2, 5), (9, 8, 7)]:
        stored = np.unravel_index(grid[ijk], SHAPE, order="F")
        assert np.allclose(vol.mm(ijk), affine[:3, :3] @ stored + affine[:3, 3])
    assert vol.mm((9, 0, 0))[0] > vol.mm((0, 0, 0))[0]  # left to right along the first axis


def test_surface_group_report_with_mesh(tmp_path):
    rng = np.random.default_rng(2)
    mesh = write_icosahedron(tmp_path / "lh.surf.gii")
    paths = []
    for i in range(8):
        values = (rng.standard_normal(12) + np.r_[3.0, 3.0, 3.0, np.zeros(9)]).astype(np.float32)
        paths.append(write_gifti(tmp_path / f"s{i}.func.gii", values[None]))
    out = tmp_path / "g"
    assert (
        main(
            [
                "group",
                *map(str, paths),
                "--permutations",
                "100",
                "--tfce",
                "--mesh",
                str(mesh),
                "--cluster-threshold",
                "2",
                "--seed",
                "1",
                "-o",
                str(out),
                "--report",
                "--quiet",
            ]
        )
        == 0
    )
    page = _check_page(out / "report.html", "lateral and medial views", "contrast intercept weights")
    assert "TFCE family-wise error p &lt; 0.05" in page and "from 100 sign-flips" in page
    assert "Clusters (along the mesh" in page and "<th>vertex</th>" in page and "x mm" in page
    assert "Views of the whole surface (no slices); the global maximum of the shown map: t = " in page
    # the maxima's family-wise error p from the run's maps (max statistic and TFCE), their uncorrected p from the
    # shuffles
    assert "<th>p FWE</th><th>p FWE TFCE</th>" in page and "p: uncorrected, one-sided, from 100 sign-flips" in page
    assert "correlation matrix" not in page  # one column, the intercept: nothing to correlate
    assert "every correction (family-wise error, FDR, Bonferroni) is over the 12 vertices of this surface alone" in page
    assert "contrast-intercept_clusters.tsv" in page  # the run's own cluster table, with FWE p
    # without a mesh the same folder still gives a report (distributions and top vertices)
    assert main(["report", str(out), "--mesh", str(tmp_path / "s0.func.gii"), "--force"]) == 2  # not a surface
    settings = json.loads((out / "model.json").read_text())["settings"]
    reseal(out, settings={**settings, "mesh": None})
    assert main(["report", str(out), "--force", "--quiet"]) == 0
    page = _check_page(out / "report.html", "distribution of t")
    assert "No surface mesh was given" in page and "Largest values shown" in page and "No slices or views" in page


def test_cifti_report(tmp_path):
    rng = np.random.default_rng(3)
    _, X = _design(tmp_path, n=12)
    design = tmp_path / "d12.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{a}\t1\n" for a in X[:, 0]))
    matrix = 50 + rng.standard_normal((12, 15 + 12))
    matrix[:, :4] += 4 * X[:, :1]
    matrix[:, 15:17] += 4 * X[:, :1]  # two voxels, (1, 1, 0) and (1, 1, 1)
    bold = write_cifti(tmp_path / "bold.dtseries.nii", matrix)
    out = tmp_path / "c"
    assert (
        main(["fit", str(bold), "--design", str(design), "--contrast", "a=A", "-o", str(out), "--report", "--quiet"])
        == 0
    )
    page = _check_page(out / "report.html", "Design matrix", "distribution of z", "orthogonal slices", "axial mosaic")
    assert "CORTEX_LEFT" in page and "THALAMUS_LEFT" in page and "Clusters of the voxels" in page
    # the structure table and the voxels' clusters: the planted effects found
    cortex = re.search(r"CORTEX_LEFT</td><td class=n>15</td><td class=n>(\d+)</td>", page)
    assert cortex and 3 <= int(cortex.group(1)) <= 4
    assert re.search(r"THALAMUS_LEFT</td><td class=n>12</td><td class=n>2</td><td class=n>\d", page)
    x, y, _ = AFFINE[:3, :3] @ [1, 1, 0] + AFFINE[:3, 3]
    assert (
        "<tr><td class=n>1</td><td class=n>2</td><td class=n>20</td><td class=n>" in page
        and f"<td class=n>{x:g}</td><td class=n>{y:g}</td>" in page
    )
    # an anatomical image under the CIFTI file's voxels, resampled to their grid; the same slices otherwise
    t1 = np.zeros((6, 6, 4), dtype=np.float32)
    t1[1:5, 1:5, :] = 300.0
    nib.save(nib.Nifti1Image(t1, AFFINE), tmp_path / "t1.nii.gz")
    assert main(["report", str(out), "--background", str(tmp_path / "t1.nii.gz"), "--force", "--quiet"]) == 0
    drawn = _check_page(out / "report.html", "orthogonal slices", "axial mosaic")
    assert "voxels are drawn in RAS orientation over t1.nii.gz, resampled to their grid" in drawn
    assert drawn != page and "Clusters of the voxels" in drawn
    # a --mesh, of any size, was passed over for CIFTI maps (a surface tester's): refused, the page as it was
    from voxfit.exceptions import InputError
    from voxfit.report import write_report

    mesh = write_icosahedron(tmp_path / "lh.surf.gii")
    with pytest.raises(InputError, match="`mesh` draws GIFTI surface maps, and these maps are CIFTI grayordinates"):
        write_report(out, mesh=mesh, force=True)
    assert (out / "report.html").read_text() == drawn


def test_background_under_surface_maps_is_refused(tmp_path, capsys):
    """--background is an image under volume maps: given for maps on a surface (GIFTI, or a CIFTI file of
    vertices alone) or of an array it would be ignored; refused, saying so, and no report is written."""
    rng = np.random.default_rng(5)
    design = tmp_path / "d.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{i % 2}\t1\n" for i in range(12)))
    t1 = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), AFFINE), t1)
    gifti = write_gifti(tmp_path / "bold.func.gii", 100 + rng.standard_normal((12, 12)))
    cifti = write_cifti_runs(tmp_path, rng, frames=(12,))[0]  # (left cortex vertices only)
    array = tmp_path / "bold.npy"
    np.save(array, (100 + rng.standard_normal((12, 30))).astype(np.float32))
    for bold, kind in ((gifti, "are on a surface"), (cifti, "are on surface vertices alone"), (array, "have no voxel")):
        out = tmp_path / f"out-{bold.name}"
        argv = ["fit", str(bold), "--design", str(design), "--contrast", "a=A", "-o", str(out), "--quiet"]
        assert main(argv) == 0
        capsys.readouterr()
        assert main(["report", str(out), "--background", str(t1), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"--background {t1}: an anatomical image is drawn under volume maps, and these maps {kind}" in err
        assert len(err.strip().splitlines()) == 1 and not (out / "report.html").exists()


def test_a_surface_fits_report_is_drawn_on_its_mesh(tmp_path, capsys):
    """`fit lh.func.gii --mesh lh.surf.gii --report`: the page said no mesh was given and drew histograms only (a
    first-level record keeps the mesh for FILM alone); and `voxfit report --mesh` of a file that is not there said
    the same, exit 0. The fit's mesh draws its page; a missing one is refused."""
    rng = np.random.default_rng(6)
    design = tmp_path / "d.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{i % 2}\t1\n" for i in range(12)))
    mesh = write_icosahedron(tmp_path / "lh.surf.gii")
    values = 100 + rng.standard_normal((12, 12))
    values[1::2, :4] += 3.0  # (vertices 0-3 active: something to draw)
    gifti = write_gifti(tmp_path / "bold.func.gii", values)
    out = tmp_path / "out"
    argv = ["fit", str(gifti), "--design", str(design), "--contrast", "a=A", "--mesh", str(mesh), "-o", str(out)]
    assert main([*argv, "--report", "--quiet"]) == 0
    page = (out / "report.html").read_text()
    assert "Surface maps are drawn on lh.surf.gii." in page and "No surface mesh was given" not in page
    capsys.readouterr()
    assert main(["report", str(out), "--mesh", str(tmp_path / "gone.surf.gii"), "--force"]) == 2
    err = capsys.readouterr().err
    assert "gone.surf.gii: no such file" in err and err.count("\n") == 1, err
    # (--background was passed over where the page is drawn on the mesh, exit 0)
    t1 = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), AFFINE), t1)
    assert main(["report", str(out), "--mesh", str(mesh), "--background", str(t1), "--force"]) == 2
    err = capsys.readouterr().err
    assert "these maps are on a surface, drawn on its mesh; leave it out" in err and err.count("\n") == 1, err


def test_array_group_and_fixed_effects_runs(tmp_path):
    rng = np.random.default_rng(4)
    maps = rng.standard_normal((10, 50)) + np.r_[np.full(5, 2.0), np.zeros(45)]
    np.save(tmp_path / "maps.npy", maps.astype(np.float32))
    out = tmp_path / "g"
    assert main(["group", str(tmp_path / "maps.npy"), "-o", str(out), "--report", "--quiet"]) == 0
    page = _check_page(out / "report.html", "distribution of t")
    assert (
        "family-wise error p &lt; 0.05 (Bonferroni), from parametric inference" in page
        and "10 maps × 50 elements" in page
    )
    assert (
        "No slices: the data have no voxel grid." in page
        and "<th>element</th><th>t</th><th>z</th><th>p unc.</th>" in page
    )

    bolds = [_volume(tmp_path, rng)]
    first = nib.load(bolds[0])  # (the second run: the first's data but a value outside the brain, not its bytes)
    second = np.asarray(first.dataobj).copy()
    second[0, 0, 0, 0] = 1.0
    nib.save(nib.Nifti1Image(second, first.affine), tmp_path / "run2.nii.gz")
    design, _ = _design(tmp_path)
    out = tmp_path / "runs"
    assert (
        main(
            [
                "fit",
                str(bolds[0]),
                str(tmp_path / "run2.nii.gz"),
                "--design",
                str(design),
                str(design),
                "--contrast",
                "a=A",
                "-o",
                str(out),
                "--report",
                "--quiet",
            ]
        )
        == 0
    )
    page = _check_page(out / "report.html", "Run 1 matrix", "Run 2 matrix", "orthogonal slices")
    assert "fixed effects across runs" in page and f"2 runs of {N} + {N} scans × " in page
    assert "over the mean image of the data" in page  # the mean over both runs' scans (here one run's, twice)
    mask = nib.load(out / "mask.nii.gz").get_fdata() > 0
    data = nib.load(bolds[0]).get_fdata()
    np.testing.assert_allclose(
        nib.load(out / "stat-mean_statmap.nii.gz").get_fdata()[mask], data.mean(axis=3)[mask], rtol=1e-6
    )


@pytest.mark.usefixtures("no_reserve")
def test_mean_image_or_the_baseline_under_the_maps(volume_run, tmp_path):
    """Fits write the run's mean image (in memory or from a streamed pass's sums) and reports draw over it;
    a folder without one (written by an older voxfit) is drawn over the constant's estimate, the baseline."""
    mask = nib.load(volume_run / "mask.nii.gz").get_fdata() > 0
    expected = nib.load(volume_run.parent / "bold.nii.gz").get_fdata().mean(axis=3)[mask]
    np.testing.assert_allclose(nib.load(volume_run / "stat-mean_statmap.nii.gz").get_fdata()[mask], expected, rtol=1e-6)
    assert "over the mean image of the data" in (volume_run / "report.html").read_text()
    design, _ = _design(volume_run.parent)
    out = tmp_path / "streamed"
    assert (
        main(
            [
                "fit",
                str(volume_run.parent / "bold.nii.gz"),
                "--design",
                str(design),
                "--contrast",
                "a=A",
                "--max-memory",
                "200K",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "model.json").read_text())["settings"]["noise_details"]["streamed"]
    assert main(["report", str(out), "--quiet"]) == 0  # (a report needs more than the 200K that streamed the fit)
    np.testing.assert_allclose(nib.load(out / "stat-mean_statmap.nii.gz").get_fdata()[mask], expected, rtol=1e-6)
    assert "over the mean image of the data" in (out / "report.html").read_text()
    (out / "stat-mean_statmap.nii.gz").unlink()
    assert main(["report", str(out), "--force", "--quiet"]) == 0
    assert (
        "over the estimate of &#x27;constant&#x27; (the baseline signal of the run)"
        in (out / "report.html").read_text()
    )


def test_progress_bar_when_asked(volume_run, capsys):
    from voxfit.report import write_report

    write_report(volume_run, force=True, progress=True)
    assert "report [" in capsys.readouterr().err


def test_figures_of_a_large_design_keep_every_name(tmp_path):
    """300 scans x 60 columns with long names: every column named (long names cut in the middle), no
    layout warning; mm³ in plain digits; a surface cluster of two vertices of a triangle is drawn."""
    import warnings

    from voxfit.report import _figures as figures
    from voxfit.report._page import _number

    rng = np.random.default_rng(6)
    names = [f"condition_with_a_rather_long_name_{j}" if j < 10 else f"confound{j}" for j in range(59)] + ["constant"]
    X = np.column_stack([rng.standard_normal((300, 59)), np.ones(300)])
    kinds = ["condition", "derivative"] * 5 + ["confound"] * 49 + ["constant"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for png in (
            figures.design_matrix(X, names, tr=2.0),
            figures.contrast_vector(np.eye(2, 60), names),
            figures.regressors(X, names, kinds, 2.0),
        ):
            Image.open(io.BytesIO(png)).load()
    labels = figures._tick_names(names)
    assert len(labels) == 60 and labels[-1] == "constant" and max(map(len, labels)) <= 30
    assert labels[3].startswith("condition_with") and labels[3].endswith("name_3") and "…" in labels[3]
    assert _number(17728.0) == "17,728" and _number(3.375) == "3.375"

    coords = nib.load(write_icosahedron(tmp_path / "m.surf.gii")).darrays[0].data
    faces = nib.load(tmp_path / "m.surf.gii").darrays[1].data
    shown = np.isin(np.arange(12), [0, 11])  # one edge: no triangle has all three vertices shown
    png = figures.surface_views(coords, faces, np.where(shown, 5.0, 0.0), shown, figures.colour_scale(5.0, False))
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    views = rgb[:, : int(0.85 * rgb.shape[1])]  # not the colour bar
    assert np.sum((views[..., 0] - views[..., 2] > 40) & (views[..., 1] < 60)) > 50  # red triangles


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_renders_in_headless_chromium(volume_run, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400",
        f"--screenshot={shot}",
        (volume_run / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    pixels = np.asarray(img, dtype=float)
    assert pixels.std() > 20  # not blank: text, figures and the header's dark band
    dark = (pixels.sum(axis=2) < 150).mean()
    assert 0.01 < dark < 0.6


def _brute_force_maxima(stat, shown, affine, most=3, apart=8.0):
    """SPM's table of maxima written out plainly: clusters by scipy.ndimage.label with corner neighbours, a
    voxel a local maximum when no 26-neighbour in the set is larger (loops), then per cluster the maxima by
    decreasing value (ties: lower F-order index first), each kept when more than `apart` mm from every kept one
    (spm_list), up to `most`. {cluster's voxels: [kept voxels in order]}."""
    from scipy import ndimage

    labels, n = ndimage.label(shown, structure=np.ones((3, 3, 3)))
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
    out = {}
    for c in range(1, n + 1):
        voxels = [tuple(int(x) for x in v) for v in np.argwhere(labels == c)]
        maxima = []
        for v in voxels:
            larger = False
            for d in offsets:
                w = tuple(v[i] + d[i] for i in range(3))
                if all(0 <= w[i] < shown.shape[i] for i in range(3)) and shown[w] and stat[w] > stat[v]:
                    larger = True
            if not larger:
                maxima.append(v)
        maxima.sort(key=lambda v: (-stat[v], np.ravel_multi_index(v, shown.shape, order="F")))
        kept = []
        for v in maxima:
            mm = affine[:3, :3] @ v + affine[:3, 3]
            if len(kept) < most and all(
                np.linalg.norm(mm - (affine[:3, :3] @ k + affine[:3, 3])) > apart for k in kept
            ):
                kept.append(v)
        out[frozenset(voxels)] = kept
    return out


def _page_maxima(stat, shown, affine, connectivity=26, by_peak=False):
    """The report's maxima rows of a 3-D map, with their voxels."""
    from voxfit.inference.graph import volume_adjacency
    from voxfit.report._page import _maxima_rows
    from voxfit.report._results import Threshold

    shape = stat.shape
    flat, flat_shown = stat.reshape(-1, order="F"), shown.reshape(-1, order="F")
    th = Threshold(flat_shown, flat, "t", None, "test", columns={"t": flat})

    def positions(elements):
        ijk = np.array(np.unravel_index(elements, shape, order="F"), dtype=float)
        return (affine[:3, :3] @ ijk + affine[:3, 3][:, None]).T

    rows, elements = _maxima_rows(
        th, lambda m: volume_adjacency(m, shape, connectivity), positions, lambda e, xyz: {}, "voxels", None, by_peak
    )
    return rows, [tuple(int(v) for v in np.unravel_index(e, shape, order="F")) for e in elements]


def test_local_maxima_match_a_brute_force_table(rng):
    """Smooth noise on an anisotropic grid (2 x 3 x 4.5 mm), rounded so that plateaus tie: the same clusters,
    maxima and order as the loops, and SPM's 8 mm rule thinning large clusters."""
    from scipy import ndimage

    shape = (16, 13, 9)
    affine = np.diag([2.0, 3.0, 4.5, 1.0])
    affine[:3, 3] = [-10, 4, 7]
    stat = np.round(ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) * 10, 1)
    shown = stat > np.percentile(stat, 70)
    rows, voxels = _page_maxima(stat, shown, affine)
    expected = _brute_force_maxima(stat, shown, affine)
    assert len({r["cluster"] for r in rows}) == len(expected)
    found = {}
    for row, v in zip(rows, voxels):
        cluster = next(c for c in expected if v in c)
        found.setdefault(cluster, []).append(v)
        assert row["voxels"] == len(cluster) and row["t"] == pytest.approx(stat[v], abs=1e-9)
    assert found == {c: kept for c, kept in expected.items()}
    assert any(len(kept) == 3 for kept in expected.values())  # the rule had something to thin
    # clusters numbered by size (ties: stronger peak first), maxima by decreasing value within each
    sizes = [r["voxels"] for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    for c in {r["cluster"] for r in rows}:
        values = [r["t"] for r in rows if r["cluster"] == c]
        assert values == sorted(values, reverse=True)
    # on the pages of random field theory's inference, beside SPM's table, by their peaks as SPM numbers them
    by_peak, voxels_by_peak = _page_maxima(stat, shown, affine, by_peak=True)
    assert sorted(voxels_by_peak) == sorted(voxels)
    first = {}  # (each cluster's first row: its peak)
    for row in by_peak:
        first.setdefault(row["cluster"], row["t"])
    assert list(first) == list(range(1, len(first) + 1)) and list(first.values()) == sorted(first.values())[::-1]


def test_clusters_are_numbered_by_size_or_by_peak_as_asked():
    """A cluster of 10 voxels peaking at 3 and one of 2 peaking at 8: FSL's order puts the large one first, SPM's
    (the pages of random field theory's inference, beside SPM's own table) the high peak first."""
    stat = np.zeros((14, 1, 1))
    stat[:10, 0, 0] = np.linspace(1, 3, 10)
    stat[12:, 0, 0] = [8, 5]
    shown = stat > 0
    by_size, _ = _page_maxima(stat, shown, np.eye(4))
    by_peak, _ = _page_maxima(stat, shown, np.eye(4), by_peak=True)
    assert [(r["cluster"], r["voxels"], r["t"]) for r in by_size] == [(1, 10, 3), (2, 2, 8)]
    assert [(r["cluster"], r["voxels"], r["t"]) for r in by_peak] == [(1, 2, 8), (2, 10, 3)]


def test_eight_mm_rule_in_mm_not_voxels():
    """One cluster: a line along x (2 mm voxels) with maxima 8 mm apart (dropped: SPM keeps those *more* than
    8 mm away) and 18 mm apart, and a branch up z to a maximum two voxels up: 10 mm with 5 mm slices (kept),
    4 mm with 2 mm slices (dropped, so a fourth maximum along x takes its place)."""
    shape = (18, 1, 4)
    stat = np.zeros(shape)
    shown = np.zeros(shape, bool)
    line = [3, 5, 9, 5, 4, 6, 8, 6, 4, 3, 4, 6, 5, 4, 4.5, 5, 5.5, 3]  # maxima at x = 2 (9), 6 (8), 11 (6), 16 (5.5)
    stat[:, 0, 0] = line
    stat[2, 0, 1:4] = [4, 7, 2]  # a maximum at (2, 0, 2), value 7
    shown[:, 0, 0] = True
    shown[2, 0, 1:4] = True
    thick = np.diag([2.0, 2.0, 5.0, 1.0])
    rows, voxels = _page_maxima(stat, shown, thick)
    assert voxels == [(2, 0, 0), (2, 0, 2), (11, 0, 0)] and [r["t"] for r in rows] == [9, 7, 6]
    assert rows[0]["voxels"] == 21 and {r["cluster"] for r in rows} == {1}
    # on the page, SPM's layout: the cluster's number and size on its first maximum's row only
    from voxfit.report._page import _maxima_table
    from voxfit.report._results import Threshold

    th = Threshold(shown.ravel(order="F"), stat.ravel(order="F"), "t", None, "test", contrast="c")
    html = _maxima_table("Clusters", rows, th, "neighbours", "voxels")
    assert re.findall(r"<tr><td( class=n)?>(\d*)</td><td( class=n)?>(\d*)</td><td class=n>([\d.]+)</td>", html) == [
        (" class=n", "1", " class=n", "21", "9"),
        ("", "", "", "", "7"),
        ("", "", "", "", "6"),
    ]
    cubic = np.diag([2.0, 2.0, 2.0, 1.0])
    assert _page_maxima(stat, shown, cubic)[1] == [(2, 0, 0), (11, 0, 0), (16, 0, 0)]
    for affine in (thick, cubic):
        assert _page_maxima(stat, shown, affine)[1] == next(iter(_brute_force_maxima(stat, shown, affine).values()))


def test_local_maxima_by_mesh_neighbours():
    """On a mesh a vertex is a maximum when no neighbour along an edge is larger; isolated vertices are maxima."""
    from voxfit.inference.graph import mesh_adjacency
    from voxfit.report._peaks import local_maxima

    faces = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    values = np.array([1.0, 3.0, 2.0, 3.0, 0.5, 7.0])  # vertex 5 is on no triangle
    assert local_maxima(values, mesh_adjacency(faces, np.ones(6, bool))).tolist() == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]


def test_design_of_a_one_sample_model_is_not_blank():
    """A single constant column (the one-sample group design) is drawn mid-grey and framed, not white on white;
    so is a constant column among others."""
    from voxfit.report import _figures as figures

    for X, names in (
        (np.ones((60, 1)), ["intercept"]),
        (np.column_stack([np.arange(40) % 10 < 5, np.ones(40)]).astype(float), ["A", "constant"]),
    ):
        grey = np.asarray(Image.open(io.BytesIO(figures.design_matrix(X, names, "map"))).convert("L"), dtype=float)
        assert grey.var() > 2000  # a white box on white would be nearly uniform
        assert np.mean((grey > 100) & (grey < 160)) > 0.15  # the constant column's mid-grey


def test_many_inputs_folded_and_settings_as_a_table(tmp_path):
    """60 group maps: the inputs show the first, the last and the count, the whole list folded in <details>
    (no script); so does the long command line; settings are tables, not JSON."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(60):
        paths.append(tmp_path / f"sub-{i:02d}_effect.nii.gz")
        nib.save(nib.Nifti1Image(rng.standard_normal((4, 4, 3)).astype(np.float32) + 1.0, AFFINE), paths[-1])
    out = tmp_path / "g"
    assert main(["group", *map(str, paths), "-o", str(out), "--report", "--quiet"]) == 0
    page = _check_page(out / "report.html", "Design matrix")
    inputs = page[page.index("<h3>Inputs</h3>") :]
    shown, folded = inputs.split("<details><summary>all 60 input files</summary>", 1)
    assert "60 files, " in shown and "… 58 more …" in shown
    assert str(paths[0]) in shown and str(paths[-1]) in shown and str(paths[30]) not in shown
    assert all(str(p) in folded.split("</details>")[0] for p in paths)
    command = page[page.index("<th>command</th>") : page.index("<th>output folder</th>")]
    assert (
        "(60 arguments)" in command and "<summary>the whole command" in command and command.count(str(paths[30])) == 1
    )
    settings = page[page.index("<h3>Settings</h3>") :]
    assert "<th>permutations</th><td>0</td>" in settings and "<th>tfce</th><td>no</td>" in settings
    assert (
        "<th>seed</th><td>—</td>" in settings
        and "&quot;" not in settings
        and "[" not in settings
        and "null" not in settings
    )

    from voxfit.report._page import _value

    folded_list = _value(list(range(60)))
    assert folded_list.startswith("60 values: 0, 1, 2, …, 59<details>") and "58, 59</details>" in folded_list
    assert _value([1, 2]) == "1, 2" and _value(None) == "—" and _value(True) == "yes" and _value({}) == "—"


def test_many_clusters_listed_in_part_all_in_the_tsv():
    """30 lone voxels: the page lists the first 25 clusters and says how many more; the TSV holds all 30."""
    from voxfit.io.geometry import VolumeGeometry
    from voxfit.report._page import _Volume, _volume_part
    from voxfit.report._results import Threshold

    shape = (20, 12, 12)
    stat = np.zeros(shape)
    points = [(i, j, k) for i in range(0, 20, 4) for j in range(0, 12, 4) for k in range(0, 12, 4)][:30]
    for n, p in enumerate(points):
        stat[p] = 4.0 + n / 10
    flat = stat.reshape(-1, order="F")
    th = Threshold(flat > 3, flat, "z", 3.0, "test", columns={"z": flat}, contrast="c")
    page = _volume_part(_Volume(VolumeGeometry(shape, AFFINE)), np.ones(shape), th, np.ones(flat.size, bool), 26)
    assert page.count("<tr><td class=n>") == 25 and "5 more clusters not listed" in page
    rows = _embedded_tsv(page)
    assert len(rows) == 30 and all(r["voxels"] == "1" and r["cluster"] for r in rows)
    assert float(rows[0]["z"]) == pytest.approx(4.0 + 29 / 10)  # equal sizes: the strongest first


@pytest.mark.parametrize("tamper", ["grid", "z-4d", "mask-4d", "mask-empty", "record"])
def test_a_folder_whose_maps_are_not_one_fits_is_refused(volume_run, tmp_path, capsys, tamper):
    """A map on another grid (it was drawn and tabled at the mask's elements: t 0.49 beside z 8.3), a z map of
    several volumes (drawn from its first), a mask of several maps or of none, a model.json that names no contrast
    beside contrast maps: refused, naming the file, and no report written."""
    import shutil

    folder = tmp_path / "res"
    shutil.copytree(volume_run, folder)
    (folder / "report.html").unlink()
    mask = nib.load(folder / "mask.nii.gz")
    if tamper == "grid":
        other = np.random.default_rng(1).standard_normal((19, 24, 18)).astype(np.float32)
        nib.save(nib.Nifti1Image(other, mask.affine), folder / "contrast-a_stat-t_statmap.nii.gz")
    elif tamper == "z-4d":
        z = np.asarray(nib.load(folder / "contrast-a_stat-z_statmap.nii.gz").dataobj)
        nib.save(
            nib.Nifti1Image(np.stack([z, -z, z], axis=-1), mask.affine), folder / "contrast-a_stat-z_statmap.nii.gz"
        )
    elif tamper.startswith("mask"):
        values = np.asarray(mask.dataobj)
        values = np.stack([values, values], axis=-1) if tamper == "mask-4d" else np.zeros_like(values)
        nib.save(nib.Nifti1Image(values, mask.affine), folder / "mask.nii.gz")
    else:
        (folder / "model.json").write_text("{}")
    if tamper != "record":  # (as a fit would have recorded them: the report's own checks, not its checksums)
        reseal(folder)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    named = {"grid": "contrast-a_stat-t_statmap", "mask-4d": "holds 2 maps", "mask-empty": "holds no element"}
    named["z-4d"] = "contrast-a_stat-z_statmap.nii.gz holds 3 maps where voxfit writes one"
    assert named.get(tamper, "names no contrast") in err and err.count("\n") == 1, err
    assert not (folder / "report.html").exists()
    shutil.rmtree(folder)  # (the suite checks every model.json left against the schema)


def test_a_refit_without_report_removes_the_earlier_report(volume_run, tmp_path):
    """A fit rerun with --force into its folder without --report: the earlier report.html (of other maps) goes
    with the commit; the folder's other files stay, as --force keeps them."""
    import shutil
    from pathlib import Path

    folder = tmp_path / "res"
    shutil.copytree(volume_run, folder)
    (folder / "notes.html").write_text("mine")
    model = json.loads((folder / "model.json").read_text())
    bold = Path(model["inputs"][0]["path"])
    design = tmp_path / "design.tsv"
    shutil.copy(folder / "design.tsv", design)
    argv = ["fit", str(bold), "--design", str(design), "--contrast", "a=A", "-o", str(folder), "--force", "--quiet"]
    assert main(argv) == 0
    assert not (folder / "report.html").exists() and (folder / "notes.html").read_text() == "mine"


@pytest.mark.planted_model_json
def test_group_pages_say_the_inference_the_run_made(tmp_path, capsys):
    """What a group page states is what the run did: a mixed model's shuffles, clusters and p are of the null
    model's weighted t, which is drawn and tabulated (the model's own t was drawn beside clusters formed on the
    other, heading "Clusters of the run at t > 2.5"); 4 subjects' 16 sign-flips cannot reach p < 0.05, which the
    page said nowhere; an RFT run is shown at its RFT FWE threshold (Bonferroni was called the strongest); a p of
    3.5e-8 in a table read back from a TSV was shown as 0."""
    from scipy.ndimage import gaussian_filter

    from voxfit.report._page import _read_tsv

    rng = np.random.default_rng(0)
    shape, blob = (12, 12, 10), np.zeros((12, 12, 10))
    blob[4:8, 4:8, 3:7] = 1.0
    effects, variances = [], []
    for s in range(4):
        effects.append(tmp_path / f"sub-{s}_effect.nii.gz")
        variances.append(tmp_path / f"sub-{s}_variance.nii.gz")
        nib.save(nib.Nifti1Image((3 * blob + rng.standard_normal(shape)).astype(np.float32), AFFINE), effects[-1])
        nib.save(nib.Nifti1Image(np.full(shape, 0.5, np.float32), AFFINE), variances[-1])
    out = tmp_path / "mixed"
    argv = ["group", *map(str, effects), "--variances", *map(str, variances), "--permutations", "100"]
    assert main([*argv, "--cluster-threshold", "2.5", "-o", str(out), "--report", "--quiet"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8").replace("&#x27;", "'")
    assert "the null model's weighted t (stat-t_desc-nullmodel), on which the sign-flips are made" in page
    assert "Clusters of the run at t > 2.5 of the null model's weighted t" in page
    assert "with 16 shuffles the smallest p is 1/16 = 0.0625: no element can reach p &lt; 0.05" in page
    assert "the negative tail (large negative t) is not shown: the negated contrast maps it" in page
    maps = [tmp_path / f"rft-{s}.nii.gz" for s in range(12)]
    for path in maps:
        smooth = 2 * blob + 3 * gaussian_filter(rng.standard_normal(shape), 1.5)
        nib.save(nib.Nifti1Image(smooth.astype(np.float32), AFFINE), path)
    rft = ["group", *map(str, maps), "--inference", "rft", "-o", str(tmp_path / "rft"), "--report", "--quiet"]
    assert main(rft) == 0
    page = (tmp_path / "rft" / "report.html").read_text(encoding="utf-8").replace("&#x27;", "'")
    assert re.search(
        r"Threshold: t &gt; [\d.]+ \(p &lt; 0.05 FWE, random field theory\): the run's --inference rft", page
    )
    # a record without its seal (as earlier voxfit wrote them) whose RFT extent was edited into text: refused in one
    # line, not a numpy error (exit 1; a tester's); the page is left as it was
    record = json.loads((tmp_path / "rft" / "model.json").read_text())
    del record["record_blake3"], record["outputs"]
    record["inference"]["extent"] = "5"
    (tmp_path / "rft" / "model.json").write_text(json.dumps(record))
    assert main(["report", str(tmp_path / "rft"), "--force"]) == 2
    assert "holds an RFT height" in capsys.readouterr().err
    assert (tmp_path / "rft" / "report.html").read_text(encoding="utf-8").replace("&#x27;", "'") == page
    table = tmp_path / "t.tsv"
    table.write_text("peak_p_unc\tcluster_p_fwe\n3.488e-08\t1.6e-16\n")
    assert _read_tsv(table) == [{"peak_p_unc": 3.488e-08, "cluster_p_fwe": 1.6e-16}]

"""``write_report``: one self-contained HTML page (images embedded as PNG data, no script, no network) from
a finished output folder."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import shlex
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._memory import parse_memory, reserved_bytes, size_text
from .._progress import Progress
from ..exceptions import InputError
from ..io import read_mesh, sanitize_label, statmap_name, write_file_atomically
from ..io.geometry import CiftiGeometry, SurfaceGeometry, VolumeGeometry
from . import _figures as fig
from ._peaks import MAXIMA_PER_CLUSTER, MIN_DISTANCE_MM, components, local_maxima, spaced_maxima
from ._results import Contrast, Results, Threshold, read_results

__all__ = ["Sections", "build_report", "html_page", "html_table", "report_sections", "write_report"]

MOSAIC_SLICES = 12
TOP_PEAKS = 10
TABLE_ROWS = 25  # clusters listed on the page (all of them in the TSV)
LIST_ITEMS = 8  # lists longer than this show their ends, the whole folded

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#24324a;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#d6deea}nav{margin-top:8px}nav a{color:#fff;margin-right:14px}
main{padding:8px 32px 40px;max-width:1200px}section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;
padding:12px 20px;margin:16px 0}h2{font-size:18px;margin:6px 0 10px}h3{font-size:15px;margin:16px 0 6px}
img{max-width:100%;height:auto;display:block;margin:6px 0}table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f1f3f6}
td.n{text-align:right;font-variant-numeric:tabular-nums}.why{background:#f6f8fb;border-left:3px solid #24324a;
padding:6px 10px}.warn{color:#a4262c}code{font-size:12px;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:0 32px;align-items:flex-start}.small{font-size:12px;color:#444;max-width:1000px}
details{margin:4px 0}summary{cursor:pointer;color:#24324a}table.settings table{margin:0}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _number(value) -> str:
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _in_memory(record: dict) -> str:
    """How the inputs table names data given in memory (model.json has no path for them)."""
    return f"{record.get('source', '')} ({record.get('type', '')}, shape {tuple(record.get('shape', ()))})"


def html_table(rows: list[dict], limit: int | None = None) -> str:
    if not rows:
        return "<p>None.</p>"
    more = ""
    if limit is not None and len(rows) > limit:
        more = f"<p>{len(rows) - limit:,} more not listed (smaller).</p>"
        rows = rows[:limit]
    keys = list(dict.fromkeys(k for row in rows for k in row))  # rows may lack some columns: blank cells
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=n' if isinstance(row.get(k), (int, float)) else ''}>{_e(_number(row.get(k, '')))}</td>"
            for k in keys
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _read_tsv(path: Path) -> list[dict]:
    import csv

    def cell(text: str):
        try:
            value = float(text)
        except ValueError:
            return text
        # (4 significant digits: rounded to 4 decimals, p(FWE) 1.6e-16 and p 3.5e-8 were shown as 0)
        return int(value) if value.is_integer() and "." not in text else float(f"{value:.4g}")

    with path.open(newline="") as fh:
        return [{k: cell(v) for k, v in row.items()} for row in csv.DictReader(fh, delimiter="\t")]


def _value(value) -> str:
    """One setting as HTML: nested mappings as tables, lists as text (rows of a matrix on their own lines,
    long lists folded), never JSON."""
    if isinstance(value, dict):
        return _definitions(value) if value else "—"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):  # a matrix: one row a line
            return "<br>".join(_e(", ".join(_number(x) for x in row)) for row in value)
        if any(isinstance(v, dict) for v in value):
            return "".join(_value(v) for v in value)
        text = [_number(v) for v in value]
        if len(text) <= LIST_ITEMS:
            return _e(", ".join(text)) if text else "—"
        return (
            f"{len(text):,} values: {_e(', '.join(text[:3]))}, …, {_e(text[-1])}"
            f"<details><summary>all {len(text):,}</summary>{_e(', '.join(text))}</details>"
        )
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "—" if value is None else _e(_number(value))


def _definitions(mapping: dict) -> str:
    """A dict as a two-column table of settings and their values (see :func:`_value`)."""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in mapping.items())
    return f"<table class='settings'>{rows}</table>"


# ---------------------------------------------------------------- volumes


class _Volume:
    """A volume geometry reoriented to RAS for drawing; element values map to (RAS) 3-D arrays."""

    def __init__(self, geometry: VolumeGeometry):
        import nibabel as nib

        self.geometry = geometry
        self.shape, self.affine = tuple(geometry.shape), np.asarray(geometry.affine, dtype=float)
        self.ornt = nib.orientations.io_orientation(self.affine)
        self.ras_affine = self.affine @ nib.orientations.inv_ornt_aff(self.ornt, self.shape)
        self.zooms = np.sqrt((self.ras_affine[:3, :3] ** 2).sum(axis=0))
        self.obliquity = float(np.degrees(nib.affines.obliquity(self.affine).max()))

    def grid(self, values: NDArray) -> NDArray:
        import nibabel as nib

        return nib.orientations.apply_orientation(np.asarray(values).reshape(self.shape, order="F"), self.ornt)

    def mm(self, ijk_ras) -> NDArray:
        return self.ras_affine[:3, :3] @ np.asarray(ijk_ras, dtype=float) + self.ras_affine[:3, 3]

    def anatomy(self, path) -> NDArray:
        """The image at `path` (its first volume, if 4-D) resampled to this grid (trilinear), in RAS."""
        import nibabel as nib
        from nibabel.processing import resample_from_to

        nifti = str(path).lower().endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz"))
        if nifti:  # its first volume read as the fits read a map: sizes checked first, the offset, the scaling
            from ..io.readers import first_scan, open_map

            try:
                reader = open_map(path)
                if not isinstance(reader.geometry, VolumeGeometry):  # (a CIFTI file: no grid; was exit 1)
                    raise InputError(f"{path} is a {reader.geometry.kind}, not a volume; give an anatomical volume.")
                first = first_scan(reader)
            except InputError as exc:
                raise InputError(f"background image {exc}") from None
            img = nib.Nifti1Image(first.reshape(reader.geometry.shape, order="F"), reader.geometry.affine)
        try:
            img = img if nifti else nib.load(str(path))
        except Exception as exc:  # noqa: BLE001  (nibabel raises many types for unreadable images)
            raise InputError(f"background image {path}: cannot read it ({exc}).") from None
        if len(getattr(img, "shape", ())) not in (3, 4):  # (a GIFTI surface: "'GiftiImage' has no attribute 'ndim'")
            raise InputError(f"background image {path} is not a 3-D volume; give an anatomical volume.")
        try:
            img = img.slicer[..., 0] if img.ndim == 4 else img
            data = np.asarray(resample_from_to(img, (self.shape, self.affine), order=1).dataobj)
        except Exception as exc:  # noqa: BLE001  (nibabel raises many types for unreadable images)
            raise InputError(f"background image {path}: cannot read or resample it ({exc}).") from None
        if not np.any(np.isfinite(data) & (data != 0)):  # (drawn blank, said to be it, with exit 0)
            raise InputError(
                f"background image {path} does not overlap the maps (nothing of it is left on their grid once "
                "resampled); give an anatomy in the maps' space."
            )
        return self.grid(data.reshape(-1, order="F"))

    def background(self, res: Results, anatomy) -> tuple[NDArray, str]:
        """An anatomical image resampled to the maps' grid, else the run's mean image, else the first
        level's constant (the baseline signal, for folders written before fits saved a mean image), else the
        mask; with what it is."""
        if anatomy is not None:
            return self.anatomy(anatomy), f"{Path(anatomy).name}, resampled to the maps' grid"
        mean = res.read_map(statmap_name("mean", res.extension))
        if mean is not None:
            return self.grid(np.nan_to_num(mean)), "the mean image of the data"
        for design in res.designs[:1]:
            for name, kind in zip(design.names, design.kinds):
                if kind == "constant":
                    values = res.read_map(
                        statmap_name("effect", res.extension, sanitize_label(name, "regressor"), entity="regressor")
                    )
                    if values is not None:
                        return self.grid(
                            np.nan_to_num(values)
                        ), f"the estimate of {name!r} (the baseline signal of the run)"
        return self.grid(res.mask.astype(float)), "the analysis mask"


def _scale(th: Threshold):
    """The overlay's colour scale: up to the largest shown value (or the largest value when none is shown)."""
    values = th.stat[th.shown] if th.shown.any() else th.stat[np.isfinite(th.stat)]
    return fig.colour_scale(float(np.abs(values).max(initial=0.0)) or 1.0, False)


def _global_maximum(th: Threshold) -> int:
    """The shown element of largest statistic (the first of ties)."""
    index = np.flatnonzero(th.shown)
    return int(index[np.argmax(th.stat[index])])


def _volume_part(
    vol: _Volume,
    background: NDArray,
    th: Threshold,
    mask: NDArray,
    connectivity: int,
    heading: str = "Clusters",
    what: str = "map",
    by_peak: bool = False,
) -> str:
    """Orthogonal slices through the global maximum of the shown map, an axial mosaic over the mask's extent,
    and the table of clusters with their local maxima (numbered by size, or `by_peak`)."""
    from ..inference.graph import volume_adjacency

    def positions(elements):
        ijk = np.array(np.unravel_index(elements, vol.shape, order="F"), dtype=float)
        return (vol.affine[:3, :3] @ ijk + vol.affine[:3, 3][:, None]).T

    def describe(element, xyz):
        ijk = np.unravel_index(element, vol.shape, order="F")
        return {**_mm_columns(xyz), "i j k": " ".join(str(int(v)) for v in ijk)}

    voxel_mm3 = float(abs(np.linalg.det(vol.affine[:3, :3])))
    rows, elements = _maxima_rows(
        th,
        lambda members: volume_adjacency(members, vol.shape, connectivity),
        positions,
        describe,
        "voxels",
        voxel_mm3,
        by_peak,
    )
    stat = vol.grid(np.nan_to_num(th.stat))
    shown = vol.grid(th.shown)
    scale = _scale(th)
    top = _global_maximum(th)
    peak_ijk = np.argwhere(vol.grid(np.arange(len(th.stat))) == top)[0]
    mm = vol.mm(peak_ijk)
    # (to the table's 0.1 mm: a peak at 28.5 mm was said at 28, rounded to even, beside the table's 28.5)
    where = "(" + ", ".join(f"{round(float(v), 1):g}" for v in mm) + ") mm"
    cluster = next((r["cluster"] for r, e in zip(rows, elements) if e == top), None)
    out = [
        f"<p>Orthogonal slices through the global maximum of the shown {what}: {_e(th.stat_name)} = "
        f"{th.stat[top]:.3g} at {where}" + (f", in cluster {cluster}" if cluster is not None else "") + ".</p>",
        _img(
            fig.orthogonal_slices(background, stat, shown, vol.zooms, peak_ijk, mm, scale, th.stat_name),
            f"orthogonal slices through {where}",
        ),
    ]
    z_extent = np.flatnonzero(vol.grid(mask).any(axis=(0, 1)))
    slices = np.unique(np.linspace(z_extent[0], z_extent[-1], MOSAIC_SLICES + 2).round().astype(int)[1:-1])
    centre = (np.array(stat.shape[:2]) - 1) / 2
    z_mm = [vol.mm((*centre, k))[2] for k in slices]  # at the slice's centre (the slices of oblique grids tilt)
    out.append(_img(fig.mosaic(background, stat, shown, vol.zooms, slices, z_mm, scale, th.stat_name), "axial mosaic"))
    neighbours = f"{connectivity}-connected neighbours (SPM's spm_max uses 18)"
    out.append(_maxima_table(f"{heading} ({connectivity}-connected)", rows, th, neighbours, "voxels", by_peak))
    return "".join(out)


def _mm_columns(xyz) -> dict:
    return {"x mm": round(float(xyz[0]), 1), "y mm": round(float(xyz[1]), 1), "z mm": round(float(xyz[2]), 1)}


def _maxima_rows(
    th: Threshold, adjacency_of, positions, describe, unit: str, element_mm3: float | None = None, by_peak=False
):
    """Clusters of the shown elements (``adjacency_of(members)``: the neighbours among the elements
    `members`), numbered by size, then by their peak (FSL's cluster), or `by_peak` by their peak, then by size
    (SPM's results table), each with up to three local maxima more than 8 mm apart
    (SPM's rule, :mod:`._peaks`): one row per maximum, every column filled, and the maxima's element numbers.
    ``positions(elements)`` gives their (m, 3) positions in mm, ``describe(element, xyz)`` their position
    columns."""
    index = np.flatnonzero(th.shown)
    adjacency = adjacency_of(th.shown)
    component = components(adjacency)
    sizes = np.bincount(component)
    first = np.full(sizes.size, index.size)
    np.minimum.at(first, component, np.arange(index.size))
    values = th.stat[index]
    peak = np.full(sizes.size, -np.inf)
    np.maximum.at(peak, component, values)
    order = np.lexsort((first, -sizes, -peak) if by_peak else (first, -peak, -sizes))  # (ties: the first element)
    rank = np.empty(sizes.size, dtype=int)
    rank[order] = np.arange(1, sizes.size + 1)
    cluster = rank[component]
    xyz = positions(index)
    kept = spaced_maxima(cluster, values, xyz, local_maxima(values, adjacency))
    rows = []
    for k in kept:
        size = int(sizes[component[k]])
        row = {"cluster": int(cluster[k]), unit: size}
        if element_mm3 is not None:
            row["mm³"] = size * element_mm3
        for name, values_of in th.columns.items():
            v = float(values_of[index[k]])
            row[name] = round(v, 3) if name in ("t", "F", "z") else v
        rows.append({**row, **describe(int(index[k]), xyz[k])})
    return rows, [int(index[k]) for k in kept]


def _tsv(rows: list[dict]) -> str:
    """Rows as tab-separated text, every row every column; NaN and missing as n/a (BIDS)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value):
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "n/a"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    return "\n".join(["\t".join(keys)] + ["\t".join(cell(row.get(k)) for k in keys) for row in rows]) + "\n"


def _maxima_table(heading: str, rows: list[dict], th: Threshold, neighbours: str, unit: str, by_peak=False) -> str:
    """The clusters' table in SPM's layout (cluster columns on the first row of each cluster, blank on the
    others), the first TABLE_ROWS clusters (by size, or `by_peak`), what its columns are, and the whole table as a
    TSV to download."""
    listed, previous = [], None
    for row in rows:
        if row["cluster"] <= TABLE_ROWS:
            again = row["cluster"] == previous
            listed.append({k: "" if again and k in ("cluster", unit, "mm³") else v for k, v in row.items()})
            previous = row["cluster"]
    table = html_table(listed)
    more = (rows[-1]["cluster"] if rows else 0) - TABLE_ROWS  # every cluster has a maximum: the last is the count
    if more > 0:
        table += f"<p>{more:,} more clusters not listed ({'lower peaks' if by_peak else 'smaller'}).</p>"
    name = f"contrast-{th.contrast}_maxima.tsv" if th.contrast else "maxima.tsv"
    data = base64.b64encode(_tsv(rows).encode()).decode("ascii")
    return (
        f"<h3>{_e(heading)}</h3>"
        + table
        + f"<p class='small'>Clusters numbered by {'peak height, as SPM' if by_peak else 'size, as FSL'} "
        + f"numbers them; up to {MAXIMA_PER_CLUSTER} local maxima "
        + f"per cluster, more than {MIN_DISTANCE_MM:g} mm apart "
        f"(SPM's rule): a local maximum is at least as large as each of its {_e(neighbours)}. {_e(th.p_note)}. "
        f"<a download='{_e(name)}' href='data:text/tab-separated-values;base64,{data}'>The table as TSV</a> "
        f"({len(rows):,} row{'s' * (len(rows) != 1)}, every cluster)."
        "</p>"
    )


# ---------------------------------------------------------------- surfaces, CIFTI, arrays


def _top_elements(th: Threshold, what: str) -> list[dict]:
    index = np.flatnonzero(th.shown)
    order = index[np.argsort(-th.stat[index], kind="stable")][:TOP_PEAKS]
    return [
        {
            what: str(i),
            **{
                name: (round(float(v[i]), 3) if name in ("t", "F", "z") else float(v[i]))
                for name, v in th.columns.items()
            },
        }
        for i in order
    ]


def _surface_part(coords, faces, th: Threshold) -> str:
    """Lateral and medial views, and the clusters along the mesh's edges with their local maxima (by mesh
    neighbours, 8 mm apart in the mesh's coordinates)."""
    from ..inference.graph import mesh_adjacency

    rows, _ = _maxima_rows(
        th,
        lambda members: mesh_adjacency(faces, members),
        lambda e: coords[e],
        lambda e, xyz: {"vertex": str(e), **_mm_columns(xyz)},
        "vertices",
    )
    top = _global_maximum(th)
    x, y, z = coords[top]
    return (
        f"<p>Views of the whole surface (no slices); the global maximum of the shown map: {_e(th.stat_name)} = "
        f"{th.stat[top]:.3g} at vertex {top}, ({x:.0f}, {y:.0f}, {z:.0f}) mm.</p>"
        + _img(
            fig.surface_views(coords, faces, np.nan_to_num(th.stat), th.shown, _scale(th), th.stat_name),
            "lateral and medial views",
        )
        + _maxima_table("Clusters (along the mesh's edges)", rows, th, "neighbours along the mesh's edges", "vertices")
    )


def _cifti_voxels(geometry: CiftiGeometry):
    """The voxels of a CIFTI file: (volume of their grid, their grayordinate indices, their flat indices in the
    grid), or None when it has none."""
    models = geometry.brain_models
    index = np.flatnonzero(models.volume_mask)
    if not index.size:
        return None
    shape = tuple(int(n) for n in models.volume_shape)
    flat = np.ravel_multi_index(tuple(models.voxel[index].T), shape, order="F")
    return _Volume(VolumeGeometry(shape, np.asarray(models.affine, dtype=float))), index, flat


def _scatter(flat: NDArray, values: NDArray, vol: _Volume, fill) -> NDArray:
    out = np.full(int(np.prod(vol.shape)), fill, dtype=np.asarray(values).dtype)
    out[flat] = values
    return out


def _cifti_structures(geometry: CiftiGeometry, th: Threshold) -> list[dict]:
    """Per CIFTI structure: elements shown and the peak (vertex index, or voxel position in mm)."""
    models = geometry.brain_models
    rows = []
    for name, part, _ in models.iter_structures():
        index = np.arange(len(models))[part]
        shown = index[th.shown[index]]
        row = {"structure": name.replace("CIFTI_STRUCTURE_", ""), "elements": int(index.size), "shown": int(shown.size)}
        if shown.size:
            peak = shown[np.argmax(th.stat[shown])]
            row[f"peak {th.stat_name}"] = round(float(th.stat[peak]), 3)
            if models.volume_mask[peak]:
                x, y, z = models.affine[:3, :3] @ models.voxel[peak] + models.affine[:3, 3]
                row["peak"] = f"({x:.1f}, {y:.1f}, {z:.1f}) mm"
            else:
                row["peak"] = f"vertex {int(models.vertex[peak])}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the page


def _design_section(res: Results, anchor: str = "") -> str:
    parts = [f"<section id='{_e(anchor)}design'><h2>Design</h2>"]
    for d in res.designs:
        n, p = d.X.shape
        unit = "map" if res.level == "group" else "scan"
        parts.append(
            f"<div class='row'><div><h3>{_e(d.title)}: {n} rows × {p} column{'s' * (p != 1)}</h3>"
            + _img(fig.design_matrix(d.X, d.names, unit, d.tr), f"{d.title} matrix")
            + "</div>"
        )
        varying = np.flatnonzero(np.ptp(d.X, axis=0) > 0)
        if varying.size > 1:  # constant columns correlate with nothing
            png = fig.correlation_matrix(d.X[:, varying], [d.names[j] for j in varying])
            parts.append(
                "<div><h3>Correlation of the regressors (constant columns "
                f"left out)</h3>{_img(png, 'correlation matrix')}</div>"
            )
        parts.append("</div>")
        vif = d.vif()
        if vif:
            rows = [
                {
                    "regressor": k,
                    "VIF": round(v, 2) if np.isfinite(v) else "inf",
                    "note": "" if v <= 10 else "high: other columns explain most of it",
                }
                for k, v in vif.items()
            ]
            parts.append("<h3>Variance inflation of the regressors of interest</h3>" + html_table(rows))
        if res.level != "group" and d.of_interest:
            parts.append(
                "<h3>Regressors of interest over time</h3>"
                + _img(fig.regressors(d.X, d.names, d.kinds, d.tr), "regressors over time")
            )
    parts.append("</section>")
    return "".join(parts)


def _contrast_section(res: Results, c: Contrast, th: Threshold, draw, anchor: str = "") -> str:
    parts = [
        f"<section id='{_e(anchor)}contrast-{_e(c.file_label)}'><h2>Contrast {_e(c.label)} ({_e(c.kind)})</h2>",
        f"<p>Expression: <code>{_e(c.expression)}</code></p>",
    ]
    if c.weights is not None and res.designs and c.weights.shape[1] == len(res.designs[0].names):
        parts.append(_img(fig.contrast_vector(c.weights, res.designs[0].names), f"contrast {c.label} weights"))
    parts.append(f"<p class='why'>Threshold: {_e(th.reason)}</p>")
    finite = th.stat[res.mask & np.isfinite(th.stat)]
    if not finite.size:
        parts.append(
            f"<p class='warn'>The {_e(th.stat_name)} map holds no finite value in the mask: nothing to show.</p>"
        )
    else:
        parts += [f"<p>{_e(note)}.</p>" for note in th.notes]
        if not th.shown.any():
            parts.append(
                f"<p class='warn'>No element passes the threshold (largest {_e(th.stat_name)}: {finite.max():.3g}): "
                "no slices, views or table of maxima.</p>"
            )
        parts.append(draw(th))
    table = res.clusters_table(c.file_label)
    if res.present(table):  # the run's own clusters, with their FWE p-values
        threshold = res.model.get("settings", {}).get("cluster_threshold")
        null = res.model.get("settings", {}).get("model") in ("mixed", "fixed")  # (formed on the null model's t)
        of = f" of the null model's weighted {c.kind} (stat-{c.kind}_desc-nullmodel)" if null else ""
        parts.append(
            f"<h3>Clusters of the run at {_e(c.kind)} > {_e(threshold)}{_e(of)} ({_e(table.name)})</h3>"
            + html_table(_read_tsv(res.checked(table)), TABLE_ROWS)
        )
    parts.append(_rft_part(res, c))
    parts.append("</section>")
    return "".join(parts)


def _rft_part(res: Results, c: Contrast) -> str:
    """SPM's results table of ``--inference rft`` (``voxfit.report.rft_table``) and its footer, from the run's TSV
    and model.json."""
    entry = ((res.model.get("inference") or {}).get("contrasts") or {}).get(c.file_label)
    table = res.folder / f"contrast-{c.file_label}_desc-rft_table.tsv"
    if entry is None or not res.present(table):
        return ""
    f = entry.get("footer") or {}

    def num(key, fmt=".3f"):
        value = f.get(key)
        return "none" if value is None else format(value, fmt) if isinstance(value, float) else _e(value)

    def triple(key):
        return ", ".join(format(v, ".1f") for v in f.get(key) or [])

    footer = [
        f"Height threshold {_e(f.get('statistic'))} = {num('height', '.2f')} (p &lt; {num('height_p_unc', '.3g')} "
        f"uncorrected, p &lt; {num('height_p_fwe', '.3g')} FWE)",
        f"Extent threshold k = {num('extent_voxels')} voxels (p &lt; {num('extent_p_unc', '.3g')} uncorrected, "
        f"p &lt; {num('extent_p_fwe', '.3g')} FWE)",
        f"Expected voxels per cluster, &lt;k&gt; = {num('expected_voxels_per_cluster')}",
        f"Expected number of clusters, &lt;c&gt; = {num('expected_clusters', '.2f')}",
        f"FWEp: {num('fwe_height')}, FDRp: {num('fdr_height')}, FWEc: {num('fwe_extent_voxels', '.0f')}, "
        f"FDRc: {num('fdr_extent_voxels', '.0f')}",
        f"Degrees of freedom = [{', '.join(format(v, '.1f') if v is not None else 'inf' for v in f.get('dof') or [])}]",
        f"FWHM = {triple('fwhm_mm')} mm; {triple('fwhm_voxels')} voxels",
        f"Volume: {num('search_mm3', '.0f')} mm³ = {num('search_voxels')} voxels = {num('search_resels', '.1f')} "
        f"resels; voxel size {triple('voxel_size_mm')} mm (resel = {num('resel_voxels', '.2f')} voxels)",
    ]
    smoothness = (res.model.get("inference") or {}).get("smoothness") or {}
    return (
        f"<h3>Random field theory: SPM's results table ({_e(table.name)})</h3>"
        f"<p class='why'>Field: {_e(entry.get('field'))}{_e(_mapped_field(entry))}; smoothness from "
        f"{_e(smoothness.get('residuals', 'the residuals'))}. Clusters in order of their largest maximum, up to 3 "
        "maxima more than 8 mm apart (SPM's spm_list); permutations remain the recommended inference for group "
        "data (Eklund et al. 2016).</p>"
        + html_table(_read_tsv(res.checked(table)), TABLE_ROWS)
        + "<ul>"
        + "".join(f"<li>{line}</li>" for line in footer)
        + "</ul>"
    )


def _mapped_field(entry: dict) -> str:
    """What a field of the median dof is (the model's dof vary by element), where the record says so."""
    if not isinstance(entry.get("height_z"), (int, float)):
        return ""
    return (
        " of the contrast's median dof (the model's dof vary by element: each element's statistic mapped to that dof "
        "through its own p, so the table's values are not the saved maps'; the page draws the z map at "
        f"{entry['height_z']:.2f}, the height's equivalent)"
    )


def _command(words: list[str]) -> str:
    """The command line, quoted for a shell; when it is long (hundreds of input files), runs of more than
    LIST_ITEMS arguments without a dash shown by their first and last, the whole command folded below."""
    if not words:
        return "(Python API)"
    full = shlex.join(words)
    if len(full) <= 300:
        return f"<code>{_e(full)}</code>"
    parts, run = [], []

    def flush():
        if len(run) > LIST_ITEMS:
            parts.append(f"{shlex.quote(run[0])} … {shlex.quote(run[-1])} ({len(run):,} arguments)")
        else:
            parts.extend(shlex.quote(w) for w in run)
        run.clear()

    for n, word in enumerate(words):
        if n >= 2 and not word.startswith("-"):
            run.append(word)
            continue
        flush()
        parts.append(shlex.quote(word))
    flush()
    return (
        f"<code>{_e(' '.join(parts))}</code><details><summary>the whole command ({len(words):,} words)</summary>"
        f"<code>{_e(full)}</code></details>"
    )


def _inputs(inputs: list[dict]) -> str:
    """The input files: all of them when few; else the first, the last and the count, the whole list folded. Their
    digests are BLAKE3 (record version 1: SHA-256), under the record's own key."""
    digest = "sha256" if inputs and "sha256" in inputs[0] else "blake3"
    rows = [
        {"path": i.get("path") or _in_memory(i), "bytes": i.get("bytes"), digest: i.get(digest, "")} for i in inputs
    ]
    if len(rows) <= LIST_ITEMS:
        return html_table(rows)
    total = sum(r["bytes"] for r in rows if isinstance(r["bytes"], int))
    return (
        f"<p>{len(rows):,} files, {total:,} bytes in all; the first and the last:</p>"
        + html_table([rows[0], {"path": f"… {len(rows) - 2:,} more …"}, rows[-1]])
        + f"<details><summary>all {len(rows):,} input files</summary>{html_table(rows)}</details>"
    )


def _settings_section(res: Results, generated: str, folder: Path) -> str:
    m = res.model
    parts = ["<section id='settings'><h2>Settings and provenance</h2>"]
    about = {
        "voxfit version": _e(m.get("voxfit_version", "unknown")),
        "report made": _e(generated),
        "command": _command(m.get("command") or []),
        "output folder": _e(str(folder.resolve())),
    }
    if res.level == "group":  # which model: least squares on the effects, or mixed / fixed effects
        mixed = (m.get("settings") or {}).get("mixed_effects") or {}
        about["group model"] = _e(mixed.get("model", "ordinary least squares on the effect maps"))
    parts.append(
        "<table class='settings'>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in about.items())
        + "</table>"
    )
    run = m.get("run")
    parts.append("<h3>Timing and memory</h3>")
    units = {
        "started": "started",
        "load_s": "reading the data (s)",
        "fit_s": "fitting (s)",
        "elapsed_s": "elapsed (s)",
        "peak_memory_mib": "peak memory (MiB)",
    }
    parts.append(
        _definitions({units.get(k, k): v for k, v in run.items()})
        if run
        else "<p>Not recorded (a folder written before voxfit recorded them).</p>"
    )
    inputs = [i for r in m.get("runs", []) for i in r.get("inputs", [])] or m.get("inputs", [])
    parts.append("<h3>Inputs</h3>" + _inputs(inputs))
    for key in ("data", "mask", "design", "settings"):
        if isinstance(m.get(key), dict):
            parts.append(f"<h3>{key.capitalize()}</h3>" + _definitions(m[key]))
    parts.append("</section>")
    return "".join(parts)


def _diagnostics_section(res: Results) -> str:
    """``--diagnostics``: the whitened residuals' spectrum against white noise's flat line, their lag-1..4
    autocorrelation over the mask, the Ljung-Box share of rejections with its rule, and the warning ('' when the
    fit has no diagnostics)."""
    d = (res.model.get("settings") or {}).get("diagnostics")
    if not isinstance(d, dict):
        return ""
    noise = (res.model.get("settings") or {}).get("noise_model", "")
    parts = [f"<section id='diagnostics'><h2>Residual whiteness (noise model {_e(noise)})</h2>"]
    if d.get("warning"):
        parts.append(f"<p class='warn'>Warning: {_e(d['warning'])}</p>")
    else:
        parts.append("<p>The whitened residuals pass the whiteness rule below.</p>")
    spectrum = d.get("spectrum") or {}
    power = np.asarray([np.nan if p is None else p for p in spectrum.get("power", [])], dtype=np.float64)
    if power.size:
        tr = spectrum.get("tr")
        n_scans = (res.model.get("data") or {}).get("n_scans") or max(2 * (power.size - 1), 1)
        freq = np.arange(power.size) / n_scans
        unit = "cycles per scan" if not tr else "Hz"
        if tr:
            freq = freq / float(tr)
        parts.append(_img(fig.residual_spectrum(freq, power, unit), "spectrum of the whitened residuals"))
        parts.append(
            f"<p>Each voxel's periodogram over its sum of squares, averaged over the mask: white residuals lie "
            f"on the dashed line at 1 (bins the design's columns take out fall below it). Residuals: "
            f"{_e(d.get('residuals', ''))}.</p>"
        )
    lags = d.get("acf_lags") or []
    spread = d.get("acf_p5_median_p95") or []
    expected = d.get("acf_expected_if_white") or []
    rows = []
    for i, k in enumerate(lags):
        q = spread[i] if i < len(spread) else [None, None, None]
        rows.append(
            {
                "lag": k,
                "mean": (d.get("acf_mean") or [None] * len(lags))[i],
                "5th percentile": q[0],
                "median": q[1],
                "95th percentile": q[2],
                "expected if white": expected[i] if i < len(expected) else None,
            }
        )
    parts.append("<h3>Autocorrelation of the whitened residuals</h3>" + html_table(rows))
    lb = d.get("ljung_box") or {}
    share, interval = lb.get("share_p_below"), lb.get("binomial_interval_95") or [None, None]
    parts.append(
        "<h3>Ljung-Box</h3>"
        + _definitions(
            {
                "lags (degrees of freedom)": f"{lb.get('lags')} ({lb.get('dof')})",
                f"share of voxels with p < {lb.get('level')}": share,
                "95% binomial interval if white": f"{interval[0]} - {interval[1]}",
                "voxels": lb.get("n_voxels"),
                "rule": d.get("rule", ""),
                "maps": ", ".join(d.get("maps") or []),
            }
        )
    )
    parts.append("</section>")
    return "".join(parts)


def _rows(res: Results) -> str:
    """What the model was fitted to: scans, runs of scans, or maps."""
    n = [d.X.shape[0] for d in res.designs] or [res.model.get("data", {}).get("n_scans", "?")]
    if res.level == "group":
        return f"{n[0]} maps"
    return f"{len(n)} runs of {' + '.join(map(str, n))} scans" if len(n) > 1 else f"{n[0]} scans"


# What the report holds per element of the grid (a few float64 maps and slices of it at once) and per voxel of
# the mask: the voxels' positions (3 float64), a dozen float64 maps read or derived (z, p, the statistic,
# thresholds, FDR, clusters' labels), and for the cluster tables the neighbours (4 bytes each, built from
# pairs of 8-byte indices). Measured: 1.1 GiB for a 160^3 grid in the mask (4.1 M voxels, 6 neighbours), whose
# bound is 1.4 GiB; 265 MiB for a first-level fit of 164 k voxels (26 neighbours), bound 366 MiB.
REPORT_ELEMENT_BYTES = 40
REPORT_VOXEL_BYTES = 24 + 12 * 8 + 8


def report_memory(n_elements: int, n_voxels: int, connectivity: int) -> int:
    """A bound on the memory of a report (bytes, the interpreter's reserve included)."""
    return reserved_bytes() + REPORT_ELEMENT_BYTES * n_elements + (REPORT_VOXEL_BYTES + 20 * connectivity) * n_voxels


def _image_elements(path) -> int:
    """Values in an image file, from its header (0 when it cannot be read: the background's own check says why)."""
    try:
        from ..io.readers import load_image

        with warnings.catch_warnings():  # (said where it is read)
            warnings.simplefilter("ignore")
            return int(np.prod(load_image(Path(path)).shape[:3], dtype=np.int64))  # (a 4-D image: its first volume)
    except Exception:  # noqa: BLE001 - an unreadable background is reported where it is read
        return 0


@dataclasses.dataclass(frozen=True)
class Sections:
    """The parts of a report on one :class:`Results`: notes for the page's header (how maps are drawn, over
    what), the design's section ('' without a design) and one section per contrast."""

    notes: tuple[str, ...]
    design: str
    contrasts: tuple[str, ...]


def _connectivity(res: Results) -> int:
    """Neighbours of a voxel in the tables of clusters: group clusters as the run formed them; first-level ones
    with corner neighbours (as FSL's cluster), but SPM's 18 where the run made random field theory's inference,
    as the page's SPM table and the voxels it shows have them (the page's table counted 63 clusters at 26 beside
    SPM's 64 of the same voxels; a tester's)."""
    from .rft_table import CONNECTIVITY

    if res.level == "group":
        return int(res.model.get("settings", {}).get("connectivity") or 26)
    return CONNECTIVITY if _rft(res) else 26


def _rft(res: Results) -> bool:
    """Whether the run made random field theory's inference: its page shows SPM's table, clusters numbered by their
    peaks, and the page's own table numbers them so too (it had numbered them by size beside it; a tester's)."""
    return (res.model.get("inference") or {}).get("method") == "rft"


def report_sections(
    res: Results,
    *,
    background=None,
    mesh=None,
    p_threshold: float | None = None,
    anchor: str = "",
    step=None,
    mesh_option: bool = True,
) -> Sections:
    """The design and contrast sections of the report on `res` (see :func:`write_report` for `background`,
    `mesh` and `p_threshold`), with `anchor` before the sections' ids (several results on one page);
    ``step()`` is called after each contrast. `mesh_option`: whether the page may point to ``voxfit report
    --mesh`` (not a study's, whose report takes none)."""
    draw, notes = _drawer(res, background, mesh, mesh_option)
    design = _design_section(res, anchor) if res.designs else ""
    contrasts = []
    for c in res.contrasts:
        contrasts.append(_contrast_section(res, c, res.threshold(c, p_threshold), draw, anchor))
        if step is not None:
            step()
    return Sections(tuple(notes), design, tuple(contrasts))


def _drawer(res: Results, background, mesh, mesh_option: bool = True):
    """How the contrasts' maps are drawn for the geometry of `res` (``draw(threshold) -> html``), and the
    notes that say so."""
    geometry = res.geometry
    if mesh is not None and not isinstance(geometry, SurfaceGeometry):  # (passed over, a wrong one too: a tester's)
        kind = {"VolumeGeometry": "volumes", "CiftiGeometry": "CIFTI grayordinates"}.get(type(geometry).__name__)
        raise InputError(
            f"`mesh` draws GIFTI surface maps, and these maps are {kind or 'not on a surface'}; leave it out."
        )
    given = mesh is not None  # (on a surface: refused on any other geometry, above)
    if given and not Path(mesh).is_file():  # (the page said no mesh was given, exit 0)
        raise InputError(f"--mesh {mesh}: no such file; give the GIFTI surface (.surf.gii) the maps lie on.")
    mesh = mesh if mesh is not None else res.model.get("settings", {}).get("mesh")
    connectivity = _connectivity(res)
    notes = []
    if isinstance(geometry, VolumeGeometry):
        vol = _Volume(geometry)
        bg, bg_name = vol.background(res, background)
        notes.append(f"Volumes are drawn in RAS orientation (the brain's left on the left), over {bg_name}.")
        if vol.obliquity > 0.5:
            notes.append(
                f"The voxel grid is oblique ({vol.obliquity:.0f}° off the axes): slices follow the grid, not "
                "the scanner's axes; positions in mm are exact."
            )

        def draw(th):
            return _volume_part(vol, bg, th, res.mask, connectivity, by_peak=_rft(res)) if th.shown.any() else ""

        return draw, notes
    if isinstance(geometry, SurfaceGeometry) and mesh is not None and Path(mesh).is_file():
        if background is not None:  # (passed over where the run recorded a mesh; refused where it had none)
            raise InputError(
                f"--background {background}: an anatomical image is drawn under volume maps, and these maps are on "
                "a surface, drawn on its mesh; leave it out."
            )
        coords, faces = read_mesh(mesh, geometry.n_vertices, geometry.structure)
        notes.append(f"Surface maps are drawn on {Path(mesh).name}.")

        def draw(th):
            return _surface_part(coords, faces, th) if th.shown.any() else ""

        return draw, notes
    if isinstance(geometry, SurfaceGeometry):
        given = (
            "was given (voxfit report --mesh lh.pial.surf.gii)" if mesh_option else "is drawn on in a study's report"
        )
        notes.append(
            f"No surface mesh {given}, so surface maps are shown as distributions with their largest values by vertex."
        )
    what = "vertex" if isinstance(geometry, SurfaceGeometry) else "element"

    voxels = _cifti_voxels(geometry) if isinstance(geometry, CiftiGeometry) else None
    if background is not None and voxels is None:
        if isinstance(geometry, SurfaceGeometry):
            kind = "are on a surface; leave it out (draw them on a mesh with --mesh)"
        elif isinstance(geometry, CiftiGeometry):
            kind = "are on surface vertices alone; leave it out"
        else:
            kind = "have no voxel grid (an array); leave it out"
        raise InputError(
            f"--background {background}: an anatomical image is drawn under volume maps, and these maps {kind}."
        )
    if voxels is not None:
        under = "their mask" if background is None else f"{Path(background).name}, resampled to their grid"
        notes.append(
            f"The CIFTI file's voxels are drawn in RAS orientation over {under}; its surface vertices as distributions."
        )

    anatomy = None if voxels is None or background is None else voxels[0].anatomy(background)
    if isinstance(geometry, SurfaceGeometry):
        no_slices = "No slices or views: surface maps are drawn on a mesh (--mesh)."
    elif isinstance(geometry, CiftiGeometry):
        no_slices = "" if voxels is not None else "No slices: the CIFTI file holds surface vertices only."
    else:
        no_slices = "No slices: the data have no voxel grid."

    def draw(th):
        out = f"<p>{_e(no_slices)}</p>" if no_slices and th.shown.any() else ""
        out += _img(
            fig.histogram(th.stat[res.mask], th.shown[res.mask], th.level, th.stat_name),
            f"distribution of {th.stat_name}",
        )
        if isinstance(geometry, CiftiGeometry):
            out += "<h3>Structures</h3>" + html_table(_cifti_structures(geometry, th))
            if voxels is not None:  # the volume part: slices and clusters as for a volume
                vol, index, flat = voxels
                grid = dataclasses.replace(
                    th,
                    stat=_scatter(flat, th.stat[index], vol, np.nan),
                    shown=_scatter(flat, th.shown[index], vol, False),
                    columns={k: _scatter(flat, v[index], vol, np.nan) for k, v in th.columns.items()},
                )
                mask = _scatter(flat, res.mask[index], vol, False)
                if grid.shown.any():
                    under = vol.grid(mask.astype(float)) if anatomy is None else anatomy
                    out += _volume_part(vol, under, grid, mask, 26, "Clusters of the voxels", "voxels")
            return out
        return out + f"<h3>Largest values shown (up to {TOP_PEAKS})</h3>" + html_table(_top_elements(th, what))

    return draw, notes


def html_page(title: str, lines, links, body: str, meta: dict | None = None) -> str:
    """A whole self-contained page: the report's style, a header with `title`, the text `lines` and the
    `links` (HTML ``<a>`` elements), and `body` (HTML) as its main part; `meta` as ``<meta name content>``."""
    extra = "".join(f"<meta name='{_e(k)}' content='{_e(v)}'>" for k, v in (meta or {}).items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width'>{extra}"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>"
        + "".join(f"<p>{_e(n)}</p>" for n in lines)
        + f"<nav>{''.join(links)}</nav></header><main>{body}</main></body></html>"
    )


def build_report(
    folder,
    *,
    background=None,
    mesh=None,
    p_threshold: float | None = None,
    progress: bool | None = None,
    max_memory=None,
    shown_as=None,
) -> str:
    """The HTML of the report on the output folder `folder` (see :func:`write_report`); `shown_as`: the folder
    the page names, where `folder` is the hidden one a run writes before its commit (it named that, gone by then)."""
    cap = None if max_memory is None else parse_memory(max_memory)
    res = read_results(folder)
    if p_threshold is not None and not 0 < p_threshold < 1:
        raise InputError(f"the report's p threshold must lie between 0 and 1; got {p_threshold!r}.")
    geometry = res.geometry
    bar = Progress("report", 2 + len(res.contrasts), enabled=progress)
    if cap is not None:
        voxels = int(np.count_nonzero(res.mask))
        connectivity = _connectivity(res) if isinstance(geometry, VolumeGeometry) else 6
        need = report_memory(geometry.n_elements, voxels, connectivity)
        if background is not None and isinstance(geometry, VolumeGeometry):  # read whole, as float64, then resampled
            need += 16 * _image_elements(background)
        if need > cap:
            raise InputError(
                f"`max_memory`={max_memory!r} cannot hold the report of {voxels:,} voxels on a grid of "
                f"{geometry.n_elements:,} elements ({size_text(reserved_bytes())} for the interpreter, "
                f"{size_text(need - reserved_bytes())} for the maps, their positions and neighbours and "
                "the background); give at "
                f"least {size_text(need)}."
            )
    generated = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    model = (res.model.get("settings") or {}).get("model") if res.level == "group" else None
    level = f"{res.level} ({model} effects)" if model in ("mixed", "fixed") else res.level
    shown = Path(res.folder if shown_as is None else shown_as)
    title = f"voxfit report: {level}, {shown.resolve().name}"
    done = iter(range(2, len(res.contrasts) + 2))
    parts = report_sections(
        res, background=background, mesh=mesh, p_threshold=p_threshold, step=lambda: bar.update(next(done))
    )
    diagnostics = _diagnostics_section(res)
    sections = [parts.design, diagnostics, *parts.contrasts, _settings_section(res, generated, shown)]
    bar.update(len(res.contrasts) + 2)
    bar.close()
    links = ["<a href='#design'>design</a>"] if res.designs else []
    links += ["<a href='#diagnostics'>residuals</a>"] if diagnostics else []
    links += [f"<a href='#contrast-{_e(c.file_label)}'>{_e(c.label)}</a>" for c in res.contrasts]
    links.append("<a href='#settings'>settings</a>")
    summary = f"{_rows(res)} × {int(res.mask.sum()):,} elements ({geometry.kind})"
    return html_page(title, [f"{summary}; {len(res.contrasts)} contrast(s).", *parts.notes], links, "".join(sections))


def write_report(
    folder,
    *,
    background=None,
    mesh=None,
    p_threshold: float | None = None,
    force: bool = False,
    progress: bool | None = None,
    max_memory=None,
) -> Path:
    """Write ``report.html`` into the finished output folder `folder`, from its model.json and maps.

    Parameters
    ----------
    folder : path
        The output folder of ``voxfit fit`` or ``voxfit group``.
    background : path, optional
        An anatomical image drawn under volume maps (resampled to their grid); default the first level's
        constant (the run's baseline signal), else the mask.
    mesh : path, optional
        A GIFTI surface (vertices and triangles) for surface maps; default the group run's ``--mesh``.
    p_threshold : float, optional
        Show elements at this uncorrected one-sided p instead of the default: SPM's p < 0.001 uncorrected,
        one-sided, for first-level maps (z > 3.09; a t contrast's positive tail), the strongest inference
        computed at 0.05 for group maps (TFCE, cluster or voxel FWE, Bonferroni, else FDR).
    force : bool
        Replace an existing report.html.
    max_memory : str or int, optional
        A cap on the whole process (``500M``, ``2G``): a report it cannot hold (see :func:`report_memory`:
        the interpreter's 256 MiB, 40 bytes per element of the grid, 128 bytes and 20 per neighbour per voxel
        of the mask) is refused before any map but the mask is read, naming the size that would.
    """
    target = Path(folder) / "report.html"
    if (target.exists() or target.is_symlink()) and not force:  # (a dangling link too)
        raise InputError(f"{target} exists; pass `force` to replace it.")
    page = build_report(
        folder, background=background, mesh=mesh, p_threshold=p_threshold, progress=progress, max_memory=max_memory
    )
    try:  # an exclusive temporary with a random name, renamed onto report.html (a link there is replaced)
        return write_file_atomically(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}.") from None

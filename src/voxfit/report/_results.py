"""A finished output folder, read back for the report: model.json, the design(s), the maps and the thresholds.

Nothing is refitted: every number comes from the files the fit wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..core import check_contrast, factorize
from ..design.events import variance_inflation
from ..design.kinds import INTEREST_KINDS, column_kinds
from ..design.read import read_design
from ..exceptions import InputError
from ..io import clusters_table_name, sanitize_label, statmap_name
from ..io.geometry import Geometry, SurfaceGeometry
from ..io.readers import apply_scale, open_map
from ..models.record import ModelRecord, check_output, is_output

__all__ = ["Contrast", "DesignView", "Results", "Threshold", "read_map", "read_one_map", "read_results"]


@dataclass
class DesignView:
    """One design matrix as the report shows it."""

    title: str
    X: NDArray
    names: list[str]
    kinds: list[str]
    tr: float | None

    @property
    def of_interest(self) -> list[int]:
        return [j for j, k in enumerate(self.kinds) if k in INTEREST_KINDS]

    def vif(self) -> dict[str, float]:
        return variance_inflation(self.X, self.names, self.of_interest)


@dataclass
class Threshold:
    """Which elements a contrast's figure shows, and why; the maps its table of maxima lists."""

    shown: NDArray[np.bool_]  # (n_elements,) where the statistic passes: one-sided, large positive values
    stat: NDArray  # (n_elements,) the statistic drawn (NaN outside the mask)
    stat_name: str
    level: float | None  # on the statistic's scale, where one applies to every element
    reason: str
    notes: list[str] = field(default_factory=list)
    # per element, what the table of maxima lists: the t or F, z, uncorrected p, FDR q and any FWE p,
    # named as the table's columns (NaN outside the mask)
    columns: dict[str, NDArray] = field(default_factory=dict)
    p_note: str = ""  # where the table's p-values come from
    contrast: str = ""  # the contrast's label in file names


@dataclass
class Contrast:
    label: str
    file_label: str
    kind: str
    expression: str
    weights: NDArray | None
    info: dict


LEVELS = {"first-level": "first level", "runs": "fixed effects across runs", "group": "group"}  # by model kind


@dataclass
class Results:
    folder: Path
    model: dict  # model.json as a dict (see voxfit.models.record.ModelRecord)
    level: str  # LEVELS[kind]: "first level", "fixed effects across runs", "group"
    designs: list[DesignView]
    contrasts: list[Contrast]
    geometry: Geometry
    mask: NDArray[np.bool_]
    extension: str
    outputs: dict | None = None  # (the record's digests of the files the fit wrote: each file read is checked)

    def present(self, path: Path) -> bool:
        """Whether `path` is a file of this fit (``voxfit.models.record.is_output``)."""
        return is_output(self.outputs, path)

    def checked(self, path: Path) -> Path:
        """`path`, refused where it is not the file the fit wrote (``voxfit.models.record.check_output``)."""
        check_output(self.outputs, path)
        return path

    def clusters_table(self, label: str) -> Path:
        """The path of a contrast's table of clusters (voxfit group's, with a cluster threshold) in the folder."""
        return self.folder / clusters_table_name(label)

    def read_map(self, name: str) -> NDArray | None:
        """The first map of file `name` in the folder, NaN outside the mask; None if there is no such file."""
        path = self.folder / name
        if not self.present(path):
            return None
        geometry, values = read_one_map(self.checked(path))
        try:  # (a map of another grid would be drawn and tabled at the mask's elements: wrong values, no error)
            self.geometry.check_same(geometry, str(path))
        except InputError:
            raise InputError(
                f"{path} is not on the grid of the folder's mask: the maps are not those of one fit; rerun the fit."
            ) from None
        return values

    def threshold(self, contrast: Contrast, p_threshold: float | None = None) -> Threshold:
        th = (_group_threshold if self.level == "group" else _first_level_threshold)(self, contrast, p_threshold)
        if p_threshold is None:
            th = _rft_threshold(self, contrast, th)
        if isinstance(self.geometry, SurfaceGeometry):  # (a page of one hemisphere: which family it corrects over)
            side = {"CortexLeft": "left hemisphere", "CortexRight": "right hemisphere"}.get(self.geometry.structure)
            th.notes.append(
                f"every correction (family-wise error, FDR, Bonferroni) is over the {int(self.mask.sum()):,} "
                f"vertices of this {side or 'surface'} alone; the other hemisphere's maps are corrected on their own "
                "(FreeSurfer's mri_glmfit-sim --2spaces doubles the p values for both)"
            )
        return th


def read_map(path: Path) -> tuple[Geometry, NDArray]:
    """Geometry and values (maps, elements) of any map file voxfit writes, in float64."""
    try:
        reader = open_map(path)
        rows = np.empty((reader.n_scans, reader.geometry.n_elements))  # filled a slab at a time: no second copy
        for start, block in reader.iter_scans():
            rows[start : start + block.shape[0]] = apply_scale(block, reader.scale)  # (the values, not those stored)
    except InputError as exc:
        raise InputError(f"cannot read {path} for the report: {exc}") from None
    return reader.geometry, rows


def read_one_map(path: Path) -> tuple[Geometry, NDArray]:
    """Geometry and values (elements,) of a file holding one map, as voxfit writes each statistic: a file of several
    (a 4-D z map put in the folder) was drawn and tabled from its first, with nothing said."""
    geometry, values = read_map(path)
    if values.shape[0] != 1:
        raise InputError(f"{path} holds {values.shape[0]} maps where voxfit writes one; rerun the fit.")
    return geometry, values[0]


_CHANGED = "it was changed after the fit; rerun the fit."


def _design_view(title: str, path: Path, info: dict) -> DesignView:
    X, names = read_design(path)
    # (a record without digests, as earlier voxfit wrote; a run's of several names its rows n_scans)
    rows, columns = info.get("n_rows", info.get("n_scans")), info.get("columns")
    if isinstance(rows, int) and X.shape[0] != rows:
        raise InputError(f"{path} holds {X.shape[0]} rows where its fit's design had {rows} rows: {_CHANGED}")
    if isinstance(columns, list) and list(names) != columns:
        raise InputError(
            f"{path} holds the columns {', '.join(names)} where its fit's design had {', '.join(map(str, columns))}: "
            + _CHANGED
        )
    kinds = list(info.get("kinds") or column_kinds(path, names, X))  # (model.json, else design.json or names)
    return DesignView(title, X, list(names), kinds, info.get("tr"))


def _weights(entry: dict, design: DesignView | None, label: str, record: Path) -> NDArray | None:
    if "weights" in entry:
        try:
            return np.atleast_2d(np.asarray(entry["weights"], dtype=float))
        except (TypeError, ValueError):
            raise InputError(f"{record}: the weights of contrast {label!r} are not numbers; rerun the fit.") from None
    if design is None:
        return None
    try:
        return check_contrast(entry["expression"], factorize(design.X, design.names, warn=False), label)
    except InputError:
        return None


def read_results(folder) -> Results:
    """Read a finished voxfit output folder (``voxfit fit``, several runs, or ``voxfit group``)."""
    folder = Path(folder)
    record = ModelRecord.read(folder)
    model = record.as_dict()
    level = LEVELS[record.kind]
    designs = []
    lost = [n for n in (record.outputs or {}) if n.endswith("design.tsv") and not (folder / n).is_file()]
    if lost:
        raise InputError(f"{folder} lacks {lost[0]}, which the fit wrote; the folder is incomplete: rerun the fit.")
    if is_output(record.outputs, folder / "design.tsv"):
        record.check_output(folder / "design.tsv")
        designs.append(_design_view("Design", folder / "design.tsv", model.get("design", {})))
    for r, run in enumerate(model.get("runs", []), 1):
        if is_output(record.outputs, folder / f"run-{r}_design.tsv"):
            record.check_output(folder / f"run-{r}_design.tsv")
            designs.append(_design_view(f"Run {r}", folder / f"run-{r}_design.tsv", run))
    masks = sorted(m for m in folder.glob("mask.*") if is_output(record.outputs, m))
    if not masks:
        raise InputError(f"{folder} holds no mask file; the report needs the maps of a finished run.")
    record.check_output(masks[0])
    geometry, mask = read_map(masks[0])
    if mask.shape[0] != 1 or not (mask[0] != 0).any():
        what = f"{mask.shape[0]} maps" if mask.shape[0] != 1 else "no element"
        raise InputError(f"{masks[0]} holds {what}, not the mask of one fit; rerun the fit.")
    extension = masks[0].name[len("mask") :]
    if not model.get("contrasts") and next(folder.glob("contrast-*_stat-*"), None) is not None:
        raise InputError(
            f"{folder / 'model.json'} names no contrast, though the folder holds contrast maps: it is not their fit's "
            "record; rerun the fit."
        )
    contrasts = []
    entries = model.get("contrasts") or {}
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):  # (edited: exit 1)
        raise InputError(f"{folder / 'model.json'}: its contrasts are not records of contrasts; rerun the fit.")
    for label, entry in entries.items():
        expression = expression_text(entry.get("expression", ""), designs)
        weights = _weights(entry, designs[0] if designs else None, label, folder / "model.json")
        kind = entry.get("kind") or ("F" if weights is not None and weights.shape[0] > 1 else "t")
        contrasts.append(Contrast(label, sanitize_label(label), kind, expression, weights, entry))
    return Results(folder, model, level, designs, contrasts, geometry, mask[0] != 0, extension, record.outputs)


def expression_text(expression, designs: list[DesignView]) -> str:
    """A contrast's recorded expression as a page says it: as written; given as weights (a BIDS node's), as the
    columns it weighs: ``trial_type.go - stop`` for [1.0, -1.0, 0.0] over the design's columns, where the weights
    are one row of numbers as long as the design is wide; else as JSON."""
    if isinstance(expression, str):
        return expression
    names = designs[0].names if designs else []
    numbers = isinstance(expression, list) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in expression
    )
    if not numbers or len(expression) != len(names) or not any(expression):
        return json.dumps(expression)
    terms = [(float(w), name) for w, name in zip(expression, names) if w]
    text = " ".join(f"{'-' if w < 0 else '+'} {'' if abs(w) == 1 else f'{abs(w):g} '}{name}" for w, name in terms)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


def _first_level_threshold(res: Results, c: Contrast, p_threshold: float | None) -> Threshold:
    """z maps at p < 0.001 uncorrected, one-sided, unless told otherwise: SPM's default height threshold for
    each contrast. A t contrast shows its positive tail (large positive t), as SPM shows it; the elements of its
    negative tail are counted in a note (SPM maps them with the negated contrast)."""
    from scipy.special import ndtri

    z = res.read_map(statmap_name("z", res.extension, c.file_label))
    p = res.read_map(statmap_name("p", res.extension, c.file_label))
    stat = res.read_map(statmap_name(c.kind, res.extension, c.file_label))
    if z is None or p is None or stat is None:
        raise InputError(
            f"{res.folder} lacks the {c.kind}, z or p map of contrast {c.label!r}; the folder is incomplete."
        )
    alpha = 0.001 if p_threshold is None else p_threshold
    level = float(-ndtri(alpha))  # z of the one-sided p; the folder's p maps are one-sided (large t, or F)
    valid = res.mask & np.isfinite(z)
    shown = valid & (z > level)
    q = _fdr_in_mask(p, res.mask)
    n_fdr, n_bonf = (
        int(np.sum(q <= 0.05)),
        int(np.sum(p[res.mask] < 0.05 / max(1, int(np.isfinite(p[res.mask]).sum())))),
    )
    why = "SPM's default height threshold for each contrast" if p_threshold is None else "the threshold asked for"
    tail = "the positive tail of the t contrast, as SPM shows it: " if c.kind == "t" else ""
    reason = f"p < {alpha:g} uncorrected, one-sided ({tail}z > {level:.2f}): {why}."
    notes = [
        f"{int(shown.sum()):,} of {int(valid.sum()):,} elements shown",
        f"{n_fdr:,} element{'s' if n_fdr != 1 else ''} reach{'es' if n_fdr == 1 else ''} FDR q < 0.05 "
        "(Benjamini–Hochberg), "
        f"{n_bonf:,} reach Bonferroni p < 0.05, both one-sided",
    ]
    if c.kind == "t":
        negative = int(np.sum(valid & (z < -level)))
        notes.append(
            f"{negative:,} elements have z < −{level:.2f} (the negative tail, not shown; as in SPM, the "
            "negated contrast maps them)"
        )
    columns = {c.kind: stat, "z": z, "p unc.": p, "q FDR": q}
    p_note = f"p: the one-sided uncorrected p of the {c.kind}; q: Benjamini–Hochberg FDR {_fdr_over(p, res.mask)}"
    return Threshold(shown, np.where(res.mask, z, np.nan), "z", level, reason, notes, columns, p_note, c.file_label)


def _rft_threshold(res: Results, c: Contrast, th: Threshold) -> Threshold:
    """Where the run made random field theory's inference (``--inference rft``), its height and extent, as SPM
    draws its results and as the page's results table lists them: the elements above the contrast's height in
    clusters of at least the extent (SPM's 18 neighbours); `th` otherwise, or where the run's record lacks them."""
    from ..inference.graph import volume_adjacency
    from ._peaks import components
    from .rft_table import CONNECTIVITY

    inference = res.model.get("inference") or {}
    entry = (inference.get("contrasts") or {}).get(c.label) or {}
    height, extent = entry.get("height_stat"), inference.get("extent") or 0
    shape = getattr(res.geometry, "shape", None)
    if inference.get("method") != "rft" or height is None or shape is None:
        return th
    # (a record without its seal, as earlier voxfit wrote them, is read as it is: edited by hand, a wrong type
    # ended the report in a numpy error, exit 1)
    number = isinstance(height, (int, float)) and not isinstance(height, bool) and np.isfinite(height)
    if not number or not isinstance(extent, int) or isinstance(extent, bool) or extent < 0:
        raise InputError(
            f"the record (model.json) in {res.folder} holds an RFT height ({height!r}) or extent ({extent!r}) that "
            "is not a number of its kind; rerun the fit to rewrite it."
        )
    name = c.kind
    if entry.get("field") == "Z":  # (a record of voxfit before 2026-12-07: dof that vary by voxel, the z map's field)
        name = "z"
    elif isinstance(entry.get("height_z"), (int, float)):  # (dof that vary by voxel: the field of the median dof)
        name, height = "z", entry["height_z"]
    stat = res.read_map(statmap_name(name, res.extension, c.file_label))
    if stat is None:
        return th
    above = res.mask & np.isfinite(stat) & (stat > height)
    shown = np.zeros_like(above)
    if above.any():
        cluster = components(volume_adjacency(above, shape, CONNECTIVITY))
        shown[above] = np.bincount(cluster)[cluster] >= extent
    height_p = inference.get("height") or {}
    said = "FWE" if height_p.get("correction") == "fwe" else "uncorrected"
    level = f"p < {height_p['p']:g} {said}, " if isinstance(height_p.get("p"), (int, float)) else ""
    clusters = f" in clusters of at least {extent:,} elements" if extent > 1 else ""
    reason = (
        f"{name} > {height:.2f} ({level}random field theory){clusters}: the run's --inference rft thresholds, as in "
        "the results table below."
    )
    kept = [n for n in th.notes[1:] if "negative tail" not in n]  # (that count was at the default height)
    notes = [f"{int(shown.sum()):,} of {int(res.mask.sum()):,} elements shown", *kept]
    return replace(
        th,
        shown=shown,
        stat=np.where(res.mask, stat, np.nan),
        stat_name=name,
        level=float(height),
        reason=reason,
        notes=notes,
    )


def _fdr_over(p: NDArray, mask: NDArray) -> str:
    """Which elements the FDR counts (m): those of the mask with a p value (an element whose model could not be
    fitted, a constant series, has none; the note had said the mask's count beside q made from fewer)."""
    inside, valid = int(mask.sum()), int(np.isfinite(p[mask]).sum())
    if valid == inside:
        return f"over the {inside:,} elements of the mask"
    return f"over the {valid:,} elements of the mask with a p value ({inside - valid:,} of its {inside:,} have none)"


def _fdr_in_mask(p: NDArray, mask: NDArray) -> NDArray:
    """Benjamini–Hochberg q of every element of the mask (NaN elsewhere)."""
    from ..inference.corrections import fdr

    q = np.full(p.shape, np.nan)
    q[mask] = fdr(p[mask])
    return q


_GROUP_P = [  # (desc of the p map, what it is) strongest first
    ("tfcefwe", "TFCE family-wise error p < 0.05"),
    ("clusterfwe", "cluster-extent family-wise error p < 0.05"),
    ("fwe", "voxelwise family-wise error p < 0.05 (max statistic)"),
    ("rftfwe", "voxelwise family-wise error p < 0.05 (random field theory)"),
    ("bonferroni", "voxelwise family-wise error p < 0.05 (Bonferroni)"),
    ("fdr", "FDR q < 0.05 (Benjamini–Hochberg)"),
]


def _group_threshold(res: Results, c: Contrast, p_threshold: float | None) -> Threshold:
    """The strongest inference the run computed at 0.05, or uncorrected p when told."""
    stat = res.read_map(statmap_name(c.kind, res.extension, c.file_label))
    if stat is None:
        raise InputError(f"{res.folder} lacks the {c.kind} map of contrast {c.label!r}; the folder is incomplete.")
    perm = c.info.get("permutation") or {}
    how = (
        (
            f"{perm['shuffles']:,} {'sign-flips' if perm.get('scheme') == 'flip' else 'permutations'}"
            + (" (all of them)" if perm.get("exhaustive") else "")
        )
        if perm
        else "parametric inference"
    )
    # a mixed or fixed model's shuffles are of the null model's weighted statistic (its clusters, TFCE and p too):
    # that map is shown and tabulated, where the model's own t was drawn beside clusters formed on the other
    null = res.read_map(statmap_name(c.kind, res.extension, c.file_label, desc="nullmodel")) if perm else None
    extra = []
    if null is not None:
        stat = null
        extra.append(
            f"the {c.kind} shown, its clusters and every p from the shuffles are the null model's weighted {c.kind} "
            f"(stat-{c.kind}_desc-nullmodel), on which the sign-flips are made; the mixed model's own {c.kind} is "
            f"stat-{c.kind}"
        )
    if perm and perm.get("shuffles") and 1 / perm["shuffles"] >= 0.05:  # (said on the command line only)
        extra.append(
            f"with {perm['shuffles']:,} shuffles the smallest p is 1/{perm['shuffles']:,} = {1 / perm['shuffles']:.3g}"
            ": no element can reach p < 0.05, whatever its effect (more subjects, or maps, are needed)"
        )
    if p_threshold is not None:
        choices = [("uncorrected", f"p < {p_threshold:g} uncorrected", p_threshold, "the threshold asked for")]
    else:
        choices = [(d, text, 0.05, "the strongest inference computed in this run") for d, text in _GROUP_P]
    for desc, text, alpha, why in choices:
        p = res.read_map(statmap_name("p", res.extension, c.file_label, desc=desc))
        if p is None:
            continue
        shown = res.mask & np.isfinite(p) & (p < alpha)
        reason = f"{text}, from {how}: {why}."
        notes = [f"{int(shown.sum()):,} of {int(res.mask.sum()):,} elements shown (large positive {c.kind})", *extra]
        if c.kind == "t":  # (first-level pages count them at their height; here the p may be corrected: not counted)
            notes.append("the negative tail (large negative t) is not shown: the negated contrast maps it, as in SPM")
        columns, p_note = _group_columns(res, c, stat, how if perm else "", parametric_z=null is None)
        return Threshold(
            shown, np.where(res.mask, stat, np.nan), c.kind, None, reason, notes, columns, p_note, c.file_label
        )
    raise InputError(f"{res.folder} holds no p map of contrast {c.label!r}; the folder is incomplete.")


def _group_columns(
    res: Results, c: Contrast, stat: NDArray, permutations: str, parametric_z: bool = True
) -> tuple[dict[str, NDArray], str]:
    """The group table's columns: the statistic, its parametric z (not beside the null model's statistic, of
    which it is not the z), the run's uncorrected p (from the shuffles when there were any) with its FDR q over
    the mask, and the family-wise error p the run computed."""
    columns = {c.kind: stat}
    z = res.read_map(statmap_name("z", res.extension, c.file_label)) if parametric_z else None
    if z is not None:
        columns["z"] = z
    p = res.read_map(statmap_name("p", res.extension, c.file_label, desc="uncorrected"))
    if p is None:
        p = res.read_map(statmap_name("p", res.extension, c.file_label))
    if p is not None:
        columns["p unc."] = p
        columns["q FDR"] = _fdr_in_mask(p, res.mask)
    source = f"from {permutations}" if permutations else "parametric"
    over = "over the mask" if p is None else _fdr_over(p, res.mask)
    note = (
        f"{'z: parametric; ' if z is not None else ''}p: uncorrected, one-sided, {source}; q: Benjamini–Hochberg FDR "
        f"{over}"
    )
    for desc, name, what in (("fwe", "p FWE", "the maximum statistic"), ("tfcefwe", "p FWE TFCE", "the maximum TFCE")):
        fwe = res.read_map(statmap_name("p", res.extension, c.file_label, desc=desc))
        if fwe is not None:
            columns[name] = fwe
            note += f"; {name}: family-wise error p of {what} {source}"
    return columns, note

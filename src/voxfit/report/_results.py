"""A finished output folder, read back for the report: model.json, the design(s), the maps and the thresholds.

Nothing is refitted: every number comes from the files the fit wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..core import check_contrast, factorize
from ..design.events import variance_inflation
from ..design.read import read_design
from ..exceptions import InputError
from ..io import sanitize_label, statmap_name
from ..io.geometry import Geometry
from ..io.readers import open_map

__all__ = ["Contrast", "DesignView", "Results", "Threshold", "read_results"]


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
        return [j for j, k in enumerate(self.kinds) if k in ("condition", "modulator", "derivative", "regressor")]

    def vif(self) -> dict[str, float]:
        return variance_inflation(self.X, self.names, self.of_interest)


@dataclass
class Threshold:
    """Which elements a contrast's figure shows, and why."""

    shown: NDArray[np.bool_]  # (n_elements,)
    stat: NDArray  # (n_elements,) the statistic drawn (NaN outside the mask)
    stat_name: str
    level: float | None  # on the statistic's scale, where one applies to every element
    two_sided: bool  # shown where |stat| > level (t contrasts at the first level), else stat > level
    reason: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Contrast:
    label: str
    file_label: str
    kind: str
    expression: str
    weights: NDArray | None
    info: dict


@dataclass
class Results:
    folder: Path
    model: dict
    level: str  # "first level", "fixed effects across runs", "group"
    designs: list[DesignView]
    contrasts: list[Contrast]
    geometry: Geometry
    mask: NDArray[np.bool_]
    extension: str

    def read_map(self, name: str) -> NDArray | None:
        """The first map of file `name` in the folder, NaN outside the mask; None if there is no such file."""
        path = self.folder / name
        return read_map(path)[1][0] if path.exists() else None

    def threshold(self, contrast: Contrast, p_threshold: float | None = None) -> Threshold:
        return (_group_threshold if self.level == "group" else _first_level_threshold)(self, contrast, p_threshold)


def read_map(path: Path) -> tuple[Geometry, NDArray]:
    """Geometry and values (maps, elements) of any map file voxfit writes, in float64."""
    try:
        reader = open_map(path)
        rows = np.concatenate([np.asarray(block, dtype=np.float64) for _, block in reader.iter_scans()])
    except InputError as exc:
        raise InputError(f"cannot read {path} for the report: {exc}") from None
    return reader.geometry, rows


def _kind_of(name: str) -> str:
    """What a column is, guessed from its name, for folders whose model.json does not say."""
    lowered = name.lower()
    if lowered in ("constant", "intercept", "mean") or lowered.startswith("constant"):
        return "constant"
    if re.fullmatch(r"(drift|cosine|poly(nomial)?)_?\d+", lowered):
        return "drift"
    return "regressor"


def _design_view(title: str, path: Path, info: dict) -> DesignView:
    X, names = read_design(path)
    kinds = list(info.get("kinds") or [_kind_of(n) for n in names])
    return DesignView(title, X, list(names), kinds, info.get("tr"))


def _weights(entry: dict, design: DesignView | None, label: str) -> NDArray | None:
    if "weights" in entry:
        return np.atleast_2d(np.asarray(entry["weights"], dtype=float))
    if design is None:
        return None
    try:
        return check_contrast(entry["expression"], factorize(design.X, design.names, warn=False), label)
    except InputError:
        return None


def read_results(folder) -> Results:
    """Read a finished voxfit output folder (``voxfit fit``, several runs, or ``voxfit group``)."""
    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise InputError(f"{folder} holds no model.json; give the output folder of a finished voxfit fit or group run.")
    try:
        model = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); rerun the fit to rewrite it.") from None
    kind = model.get("model", "first level")
    level = "group" if kind.startswith("group") else kind
    designs = []
    if (folder / "design.tsv").is_file():
        designs.append(_design_view("Design", folder / "design.tsv", model.get("design", {})))
    for r, run in enumerate(model.get("runs", []), 1):
        if (folder / f"run-{r}_design.tsv").is_file():
            designs.append(_design_view(f"Run {r}", folder / f"run-{r}_design.tsv", run))
    masks = sorted(folder.glob("mask.*"))
    if not masks:
        raise InputError(f"{folder} holds no mask file; the report needs the maps of a finished run.")
    geometry, mask = read_map(masks[0])
    extension = masks[0].name[len("mask") :]
    contrasts = []
    for label, entry in model.get("contrasts", {}).items():
        expression = entry.get("expression", "")
        expression = expression if isinstance(expression, str) else json.dumps(expression)
        weights = _weights(entry, designs[0] if designs else None, label)
        kind = entry.get("kind") or ("F" if weights is not None and weights.shape[0] > 1 else "t")
        contrasts.append(Contrast(label, sanitize_label(label), kind, expression, weights, entry))
    return Results(folder, model, level, designs, contrasts, geometry, mask[0] != 0, extension)


def _first_level_threshold(res: Results, c: Contrast, p_threshold: float | None) -> Threshold:
    """z maps at p < 0.001 uncorrected unless told otherwise: t contrasts two-sided (|z|, both signs, as
    nilearn), F contrasts (z of F) one-sided."""
    from scipy.special import ndtr, ndtri

    from ..inference.corrections import fdr_threshold

    p_name = statmap_name("p", res.extension, c.file_label)
    z = res.read_map(statmap_name("z", res.extension, c.file_label))
    if z is None or not (res.folder / p_name).exists():
        raise InputError(f"{res.folder} lacks the z or p map of contrast {c.label!r}; the folder is incomplete.")
    alpha = 0.001 if p_threshold is None else p_threshold
    two_sided = c.kind == "t"
    # the folder's p maps are one-sided (large t): two-sided p of t contrasts come from z, not from the file
    p = 2.0 * ndtr(-np.abs(z)) if two_sided else res.read_map(p_name)
    level = float(-ndtri(alpha / 2 if two_sided else alpha))
    shown = np.abs(z) > level if two_sided else z > level
    shown &= res.mask & np.isfinite(z)
    valid = np.isfinite(p) & res.mask
    q = fdr_threshold(p[valid], 0.05)
    n_fdr = int(np.sum(p[valid] <= q)) if q > 0 else 0
    n_bonf = int(np.sum(p[valid] < 0.05 / max(1, valid.sum())))
    why = ("the customary height threshold of single-subject maps (nilearn's default; SPM's for each sign)"
           if p_threshold is None else "the threshold asked for")  # fmt: skip
    sides = "two-sided, |z|" if two_sided else "z"
    reason = f"p < {alpha:g} uncorrected ({sides} > {level:.2f}): {why}."
    notes = [f"{int(shown.sum()):,} of {int(valid.sum()):,} elements shown"
             + (" (positive and negative effects)" if two_sided else ""),
             f"{n_fdr:,} elements reach FDR q < 0.05 (Benjamini–Hochberg), {n_bonf:,} reach Bonferroni p < 0.05"
             + (", both two-sided" if two_sided else "")]  # fmt: skip
    return Threshold(shown, np.where(res.mask, z, np.nan), "z", level, two_sided, reason, notes)


_GROUP_P = [  # (desc of the p map, what it is) strongest first
    ("tfcefwe", "TFCE family-wise error p < 0.05"),
    ("clusterfwe", "cluster-extent family-wise error p < 0.05"),
    ("fwe", "voxelwise family-wise error p < 0.05 (max statistic)"),
    ("bonferroni", "voxelwise family-wise error p < 0.05 (Bonferroni)"),
    ("fdr", "FDR q < 0.05 (Benjamini–Hochberg)"),
]


def _group_threshold(res: Results, c: Contrast, p_threshold: float | None) -> Threshold:
    """The strongest inference the run computed at 0.05, or uncorrected p when told."""
    stat = res.read_map(statmap_name(c.kind, res.extension, c.file_label))
    if stat is None:
        raise InputError(f"{res.folder} lacks the {c.kind} map of contrast {c.label!r}; the folder is incomplete.")
    perm = c.info.get("permutation") or {}
    how = (f"{perm['shuffles']:,} {'sign-flips' if perm.get('scheme') == 'flip' else 'permutations'}"
           + (" (all of them)" if perm.get("exhaustive") else "")) if perm else "parametric inference"  # fmt: skip
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
        notes = [f"{int(shown.sum()):,} of {int(res.mask.sum()):,} elements shown (large positive {c.kind})"]
        return Threshold(shown, np.where(res.mask, stat, np.nan), c.kind, None, False, reason, notes)
    raise InputError(f"{res.folder} holds no p map of contrast {c.label!r}; the folder is incomplete.")

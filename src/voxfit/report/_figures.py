"""The report's figures, drawn with matplotlib's object interface (no pyplot, no global state) as PNG bytes.

Volumes are drawn in RAS orientation (left of the brain on the left of each panel, "neurological"), with
the statistic over a grey background, voxels below the threshold transparent.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

from ..design.kinds import INTEREST_KINDS

__all__ = [
    "colour_scale",
    "contrast_vector",
    "correlation_matrix",
    "design_matrix",
    "histogram",
    "mosaic",
    "orthogonal_slices",
    "regressors",
    "residual_spectrum",
    "surface_views",
]

DPI = 96


def colour_scale(vmax: float, signed: bool):
    """(colormap, normalisation) of statistic overlays: RdBu_r without its pale middle over [-vmax, vmax]
    (thresholded values stay visible on a light background), or its red half over [0, vmax] when only
    positive values are shown."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, Normalize

    base = colormaps["RdBu_r"]
    high = base(np.linspace(0.67, 1.0, 128))
    if not signed:
        return ListedColormap(high, "voxfit_positive"), Normalize(0.0, vmax)
    return ListedColormap(np.vstack([base(np.linspace(0.0, 0.33, 128)), high]), "voxfit_signed"), Normalize(-vmax, vmax)


def _figure(width: float, height: float):
    """A figure without layout engine: axes keep their size and the PNG grows to hold the labels."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.05)
    return buffer.getvalue()


def _short(name: str, most: int = 30) -> str:
    """`name` cut in the middle to `most` characters (the end tells derivatives and confounds apart)."""
    return name if len(name) <= most else f"{name[: most // 2 - 1]}…{name[-(most - most // 2) :]}"


def _column_ticks(ax, names, axis: str = "x") -> None:
    """Every column named (smaller type past 50 columns, every k-th past 100), long names shortened."""
    step = max(1, int(np.ceil(len(names) / 100)))
    ticks = np.arange(0, len(names), step)
    labels = [_short(names[i]) for i in ticks]
    size = 8 if len(names) <= 50 else 6
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=size)
    else:
        ax.set_yticks(ticks, labels, fontsize=size)


def design_matrix(X: NDArray, names, rows: str = "scan", tr: float | None = None) -> bytes:
    """Grey-scale image, one row per scan or map (down), one column per regressor, each scaled to its largest
    absolute value (SPM's and nilearn's convention: -1 black, 0 mid-grey, 1 white), with the column names
    below. A constant column (an intercept, a run's constant, an empty regressor) would be a plain white or
    grey bar, and a one-sample design's only column a white box on the white page: constant columns are
    drawn mid-grey, framed, with their value written along them."""
    p = X.shape[1]
    peak = np.abs(X).max(axis=0)
    shown = X / np.where(peak > 0, peak, 1.0)
    constant = np.ptp(X, axis=0) == 0
    shown[:, constant] = 0.0
    fig = _figure(min(1.0 + 0.3 * p, 13.0), 5.0)
    ax = fig.add_subplot()
    ax.imshow(shown, aspect="auto", cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    n = X.shape[0]
    for j in np.flatnonzero(constant):
        ax.add_patch(_rectangle(j, n))
        ax.text(
            j,
            (n - 1) / 2,
            f"constant {X[0, j]:.3g}",
            rotation=90,
            ha="center",
            va="center",
            fontsize=8 if p <= 50 else 6,
            color="black",
            clip_on=True,
        )
    _column_ticks(ax, names)
    ax.set_ylabel(rows if tr is None else f"{rows} (TR {tr:g} s)")
    return _png(fig)


def _rectangle(j: int, n: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, -0.5), 1.0, n, fill=False, edgecolor="0.2", lw=0.8)


def correlation_matrix(X: NDArray, names) -> bytes:
    """Pearson correlation of the regressors (give columns that vary), the values written when they fit."""
    p = X.shape[1]
    corr = np.corrcoef(X, rowvar=False)
    size = min(2.0 + 0.35 * p, 11.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    _column_ticks(ax, names)
    _column_ticks(ax, names, axis="y")
    if p <= 14:
        for i in range(p):
            for j in range(p):
                ax.text(
                    j,
                    i,
                    f"{round(corr[i, j], 2) + 0.0:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(corr[i, j]) > 0.6 else "black",
                )
    fig.colorbar(image, ax=ax, shrink=0.8, label="correlation")
    return _png(fig)


def regressors(X: NDArray, names, kinds, tr: float | None) -> bytes:
    """The regressors of interest over time (shared time axis): one panel per condition or other regressor
    of interest, with the HRF derivatives that follow a condition drawn in its panel, named on the right."""
    panels: list[list[int]] = []
    for j, kind in enumerate(kinds):
        if kind == "derivative" and panels:
            panels[-1].append(j)
        elif kind in INTEREST_KINDS:
            panels.append([j])
    fig = _figure(9.0, 0.3 + 1.0 * len(panels))
    t = np.arange(X.shape[0]) * (tr or 1.0)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, columns in zip(axes, panels):
        ax.axhline(0, color="0.6", lw=0.6)
        for n, j in enumerate(columns):
            ax.plot(t, X[:, j], lw=1.4 if n == 0 else 0.9, label=_short(names[j]))
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (s)" if tr else "scan")
    return _png(fig)


def contrast_vector(weights: NDArray, names) -> bytes:
    """The contrast's rows over the design columns, weights written in the cells."""
    q, p = weights.shape
    vmax = np.abs(weights).max() or 1.0
    fig = _figure(min(1.0 + 0.3 * p, 13.0), 0.3 + 0.3 * q)
    ax = fig.add_subplot()
    ax.imshow(weights, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    for i in range(q):
        for j in range(p):
            if weights[i, j] != 0:
                ax.text(
                    j,
                    i,
                    f"{weights[i, j]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if abs(weights[i, j]) > 0.5 * vmax else "black",
                )
    _column_ticks(ax, names)
    ax.set_yticks(range(q), [str(i + 1) for i in range(q)] if q > 1 else [""], fontsize=8)
    return _png(fig)


def _rgba(background: NDArray, stat: NDArray, shown: NDArray, scale, grey: tuple[float, float]) -> NDArray:
    """One slice as RGBA (rows up, RAS: transposed and flipped for display): the background from black to
    light grey between `grey` = (low, high), the statistic where `shown` in a diverging map."""
    low, high = grey
    level = 0.8 * np.clip((np.nan_to_num(background) - low) / ((high - low) or 1.0), 0.0, 1.0)
    rgba = np.stack([level, level, level, np.ones_like(level)], axis=-1)
    cmap, norm = scale
    colour = cmap(np.clip(norm(np.nan_to_num(stat)), 0.0, 1.0))
    rgba[shown] = colour[shown]
    return rgba.transpose(1, 0, 2)[::-1]


def _grey_range(background: NDArray) -> tuple[float, float]:
    inside = background[np.isfinite(background) & (background != 0)]
    return (0.0, 1.0) if inside.size == 0 else (0.0, float(np.percentile(inside, 98)) or 1.0)


def _colorbar(fig, rect, scale, label: str) -> None:
    from matplotlib.cm import ScalarMappable

    cmap, norm = scale  # a Normalize of its own per bar: one shared by several figures' mappables trips
    # matplotlib's callback clean-up when they are collected (KeyError 'changed', printed as a warning)
    fig.colorbar(ScalarMappable(type(norm)(norm.vmin, norm.vmax), cmap), cax=fig.add_axes(rect), label=label)


def _tile(grid: list[list[NDArray]], gap: int = 2, title_rows: int = 6):
    """Panels in rows (each panel bottom-aligned in its row, black around), with `title_rows` blank pixel
    rows above each row for titles; the image and the (x centre, y top) of each panel."""
    widths = [sum(p.shape[1] for p in row) + gap * (len(row) - 1) for row in grid]
    heights = [max(p.shape[0] for p in row) + title_rows for row in grid]
    image = np.zeros((sum(heights), max(widths), 4))
    image[..., 3] = 1.0
    anchors, y = [], 0
    for row, height in zip(grid, heights):
        x = 0
        for panel in row:
            image[y + height - panel.shape[0] : y + height, x : x + panel.shape[1]] = panel
            anchors.append((x + panel.shape[1] / 2, y + title_rows - 1))
            x += panel.shape[1] + gap
        y += height
    return image, anchors


def _slice_image(grid, titles, aspect_grid, scale, label: str, width: float) -> bytes:
    """Rows of slices, each resampled to square pixels by its voxel aspect, drawn as one image with white
    titles over each slice and a colour bar."""
    from scipy.ndimage import zoom

    def square(panel, a):
        return zoom(panel, (max(a, 1.0), max(1.0 / a, 1.0), 1), order=0) if abs(a - 1.0) > 1e-6 else panel

    grid = [[square(p, a) for p, a in zip(row, aspects)] for row, aspects in zip(grid, aspect_grid)]
    title_rows = max(6, max(p.shape[0] for row in grid for p in row) // 8)
    image, anchors = _tile(grid, title_rows=title_rows)
    height = width * 0.9 * image.shape[0] / image.shape[1]
    fig = _figure(width, height)
    ax = fig.add_axes((0.0, 0.0, 0.9, 1.0))
    ax.imshow(image, interpolation="nearest")
    for (x, y), title in zip(anchors, titles):
        ax.text(x, y, title, ha="center", va="bottom", fontsize=8, color="white")
    ax.set_axis_off()
    _colorbar(fig, (0.92, 0.12, 0.015, 0.76), scale, label)
    return _png(fig)


def orthogonal_slices(
    background: NDArray, stat: NDArray, shown: NDArray, zooms, ijk, mm, scale, label: str = ""
) -> bytes:
    """Sagittal, coronal and axial slices through voxel `ijk` (RAS arrays), labelled with its mm position."""
    i, j, k = ijk
    grey = _grey_range(background)
    cuts = [np.s_[i, :, :], np.s_[:, j, :], np.s_[:, :, k]]
    panels = [_rgba(background[c], stat[c], shown[c], scale, grey) for c in cuts]
    aspects = [zooms[2] / zooms[1], zooms[2] / zooms[0], zooms[1] / zooms[0]]
    titles = [f"x = {mm[0]:.0f} mm", f"y = {mm[1]:.0f} mm", f"z = {mm[2]:.0f} mm"]
    return _slice_image([panels], titles, [aspects], scale, label, 10.0)


def mosaic(background: NDArray, stat: NDArray, shown: NDArray, zooms, slices, z_mm, scale, label: str = "") -> bytes:
    """Axial slices `slices` (RAS arrays), six to a row, each labelled with its z in mm."""
    grey = _grey_range(background)
    panels = [_rgba(background[:, :, k], stat[:, :, k], shown[:, :, k], scale, grey) for k in slices]
    grid = [panels[a : a + 6] for a in range(0, len(panels), 6)]
    aspects = [[zooms[1] / zooms[0]] * len(row) for row in grid]
    return _slice_image(grid, [f"z = {z:.0f}" for z in z_mm], aspects, scale, label, 12.0)


def surface_views(coords: NDArray, faces: NDArray, stat: NDArray, shown: NDArray, scale, label: str = "") -> bytes:
    """Lateral and medial views of a hemisphere (orthographic): grey shading by the surface's orientation,
    the statistic where `shown` (a triangle is coloured when two or three of its vertices are, by the mean
    of those). Triangles facing away from the viewer are not drawn, so the far side never shows through."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    tri = coords[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
    centroids = tri.mean(axis=1)
    if np.sum(normals * (centroids - coords.mean(axis=0))) < 0:  # triangles wound inwards: normals point in
        normals = -normals
    count = shown[faces].sum(axis=1)
    on = count >= 2
    values = np.where(shown[faces], np.nan_to_num(stat[faces]), 0.0).sum(axis=1) / np.maximum(count, 1)
    cmap, norm = scale
    colour = cmap(np.clip(norm(values), 0.0, 1.0))
    left = coords[:, 0].mean() < 0  # a left hemisphere's lateral side faces -x
    fig = _figure(10.0, 3.6)
    low, high = coords.min(axis=0), coords.max(axis=0)
    for n, (title, azim) in enumerate([("lateral", 180 if left else 0), ("medial", 0 if left else 180)]):
        ax = fig.add_axes((0.45 * n, 0.0, 0.45, 0.92), projection="3d")
        view = np.array([np.cos(np.radians(azim)), np.sin(np.radians(azim)), 0.0])
        facing = normals @ view > 0
        light = 0.35 + 0.55 * np.abs(normals[facing] @ view)
        rgba = np.where(on[facing, None], colour[facing], np.column_stack([light, light, light, np.ones_like(light)]))
        ax.add_collection3d(Poly3DCollection(tri[facing], facecolors=rgba, edgecolor="none"))
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_zlim(low[2], high[2])
        ax.view_init(elev=0, azim=azim)
        ax.set_proj_type("ortho")
        ax.set_box_aspect(tuple(np.maximum(high - low, 1e-6)), zoom=1.2)
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    _colorbar(fig, (0.92, 0.15, 0.015, 0.7), scale, label)
    return _png(fig)


def histogram(values: NDArray, shown: NDArray, threshold: float | None, label: str) -> bytes:
    """Distribution of a statistic over the mask, the elements `shown` in red, with the threshold marked."""
    finite = np.isfinite(values)
    fig = _figure(6.0, 2.8)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(values[finite], bins=min(100, max(20, int(finite.sum()) // 20)))
    ax.hist(
        [values[finite & ~shown], values[finite & shown]],
        bins=bins,
        stacked=True,
        color=["0.6", "tab:red"],
        label=["not shown", "shown"],
    )
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", lw=1.0, ls="--", label=f"threshold {threshold:.3g}")
    ax.legend(fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("elements")
    return _png(fig)


def residual_spectrum(frequencies: NDArray, power: NDArray, unit: str) -> bytes:
    """The mask's mean spectrum of the whitened residuals (1 at every frequency for white residuals) against
    the flat line of white noise."""
    fig = _figure(6.4, 2.6)
    ax = fig.add_axes((0.1, 0.18, 0.88, 0.75))
    ax.plot(frequencies, power, color="#0b5cad", linewidth=1.2, label="whitened residuals (mean over the mask)")
    ax.axhline(1.0, color="#a4262c", linestyle="--", linewidth=1.0, label="white noise")
    ax.set_xlabel(f"frequency ({unit})")
    ax.set_ylabel("power / white")
    top = float(np.nanmax(power)) if np.isfinite(power).any() else 1.0
    ax.set_ylim(0.0, max(2.0, 1.1 * top))
    ax.set_xlim(0.0, float(frequencies[-1]) if len(frequencies) else 0.5)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return _png(fig)

"""The report's figures as PNG bytes. Matrices (design, correlations, contrast weights), regressors over time,
slices, mosaics and surface views are drawn as pixel arrays (:mod:`._raster`: numpy, text by Pillow in
matplotlib's font), at the sizes and in the colours matplotlib gave them: a matplotlib figure cost 0.1-0.4 s
each (seconds for a mesh), most of a report's time. Distributions (histograms, spectra), which few reports
hold, are drawn with matplotlib's object interface (no pyplot, no global state).

Volumes are drawn in RAS orientation (left of the brain on the left of each panel, "neurological"), with
the statistic over a grey background, voxels below the threshold transparent.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

from ..design.kinds import INTEREST_KINDS
from . import _raster as raster
from ._raster import DPI, ColourScale, colour_scale

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


def _axes_pixels(width: float, height: float) -> tuple[int, int]:
    """(height, width) in pixels of matplotlib's default axes (77% x 77.5% of the figure) in a figure of
    `width` x `height` inches: the size the matrix figures keep."""
    return round(0.77 * height * DPI), round(0.775 * width * DPI)


def _tick_names(names) -> list[str]:
    """Every column's name (shortened), or every k-th past 100 columns ('' for the others)."""
    step = max(1, int(np.ceil(len(names) / 100)))
    return [_short(name) if j % step == 0 else "" for j, name in enumerate(names)]


def design_matrix(X: NDArray, names, rows: str = "scan", tr: float | None = None) -> bytes:
    """Grey-scale image, one row per scan or map (down), one column per regressor, each scaled to its largest
    absolute value (SPM's and nilearn's convention: -1 black, 0 mid-grey, 1 white), with the column names
    below. A constant column (an intercept, a run's constant, an empty regressor) would be a plain white or
    grey bar, and a one-sample design's only column a white box on the white page: constant columns are
    drawn mid-grey, framed, with their value written along them."""
    n, p = X.shape
    peak = np.abs(X).max(axis=0)
    shown = X / np.where(peak > 0, peak, 1.0)
    constant = np.ptp(X, axis=0) == 0
    shown[:, constant] = 0.0
    grey = np.clip((shown + 1.0) / 2.0, 0.0, 1.0)
    texts = [
        raster.CellText((n - 1) // 2, int(j), f"constant {X[0, j]:.3g}", vertical=True)
        for j in np.flatnonzero(constant)
    ]
    size = _axes_pixels(min(1.0 + 0.3 * p, 13.0), 5.0)
    canvas = raster.matrix_figure(
        np.repeat(grey[..., None], 3, axis=2),
        size,
        _tick_names(names),
        name_points=8 if p <= 50 else 6,
        row_ticks=raster.nice_ticks(0, n - 1, min(9, max(1, int(size[0] * 72 / DPI / 20)))),
        row_label=rows if tr is None else f"{rows} (TR {tr:g} s)",
        texts=texts,
        frames=np.flatnonzero(constant),
    )
    return raster.encode_png(canvas)


def correlation_matrix(X: NDArray, names) -> bytes:
    """Pearson correlation of the regressors (give columns that vary), the values written when they fit, with
    a colour bar (RdBu_r over [-1, 1])."""
    p = X.shape[1]
    corr = np.corrcoef(X, rowvar=False)
    side = round(0.75 * min(2.0 + 0.35 * p, 11.0) * DPI)  # the square matplotlib's axes held beside the bar
    scale = raster.ColourScale(-1.0, 1.0, raster.rdbu_r())
    texts = []
    if p <= 14:
        texts = [
            raster.CellText(i, j, f"{round(corr[i, j], 2) + 0.0:.2f}", white=bool(abs(corr[i, j]) > 0.6), points=7)
            for i in range(p)
            for j in range(p)
        ]
    labels = _tick_names(names)
    rows = [j for j, name in enumerate(labels) if name]
    canvas = raster.matrix_figure(
        scale.rgb(corr),
        (side, side),
        labels,
        name_points=8 if p <= 50 else 6,
        row_ticks=(np.array(rows), [labels[j] for j in rows]),
        row_points=8 if p <= 50 else 6,
        texts=texts,
    )
    bar = raster.colour_bar(round(0.8 * side), scale, "correlation")
    return raster.encode_png(raster.side_by_side(canvas, bar, gap=10, pad=2))


def regressors(X: NDArray, names, kinds, tr: float | None) -> bytes:
    """The regressors of interest over time (shared time axis): one panel per condition or other regressor
    of interest, with the HRF derivatives that follow a condition drawn in its panel, named on the right."""
    panels: list[list[int]] = []
    for j, kind in enumerate(kinds):
        if kind == "derivative" and panels:
            panels[-1].append(j)
        elif kind in INTEREST_KINDS:
            panels.append([j])
    t = np.arange(X.shape[0]) * (tr or 1.0)
    lines = [[raster.Line(X[:, j], _short(names[j]), 1.4 if n == 0 else 0.9) for n, j in enumerate(c)] for c in panels]
    # matplotlib's subplots in a 9-inch figure 0.3 + 1 inch per panel: 77.5% x 77% of it, 0.2 of a panel between
    height = 0.77 * (0.3 + 1.0 * len(panels)) * DPI / (len(panels) + 0.2 * (len(panels) - 1))
    size = (round(height), round(0.775 * 9.0 * DPI))
    canvas = raster.line_panels(t, lines, size, round(0.2 * height), "time (s)" if tr else "scan")
    return raster.encode_png(canvas)


def contrast_vector(weights: NDArray, names) -> bytes:
    """The contrast's rows over the design columns (RdBu_r over [-largest, largest]), weights written in the
    cells."""
    q, p = weights.shape
    vmax = float(np.abs(weights).max()) or 1.0
    scale = raster.ColourScale(-vmax, vmax, raster.rdbu_r())
    texts = [
        raster.CellText(i, j, f"{weights[i, j]:.3g}", white=bool(abs(weights[i, j]) > 0.5 * vmax))
        for i in range(q)
        for j in range(p)
        if weights[i, j] != 0
    ]
    ticks = (np.arange(q), [str(i + 1) for i in range(q)]) if q > 1 else None
    canvas = raster.matrix_figure(
        scale.rgb(weights),
        _axes_pixels(min(1.0 + 0.3 * p, 13.0), 0.3 + 0.3 * q),
        _tick_names(names),
        name_points=8 if p <= 50 else 6,
        row_ticks=ticks,
        texts=texts,
    )
    return raster.encode_png(canvas)


def _rgb(background: NDArray, stat: NDArray, shown: NDArray, scale: ColourScale, grey: tuple[float, float]) -> NDArray:
    """One slice as RGB (rows up, RAS: transposed and flipped for display): the background from black to
    light grey between `grey` = (low, high), the statistic where `shown` in the scale's colours."""
    low, high = grey
    level = 0.8 * np.clip((np.nan_to_num(background) - low) / ((high - low) or 1.0), 0.0, 1.0)
    rgb = np.repeat(level[..., None], 3, axis=-1)
    rgb[shown] = scale.rgb(stat[shown])
    return rgb.transpose(1, 0, 2)[::-1]


def _grey_range(background: NDArray) -> tuple[float, float]:
    inside = background[np.isfinite(background) & (background != 0)]
    return (0.0, 1.0) if inside.size == 0 else (0.0, float(np.percentile(inside, 98)) or 1.0)


def _tile(grid: list[list[NDArray]], title_rows: int, gap: int = 2):
    """Panels in rows (each panel bottom-aligned in its row, black around), with `title_rows` blank pixel
    rows above each row for titles; the image and the (x centre, y bottom) of each panel's title band."""
    widths = [sum(p.shape[1] for p in row) + gap * (len(row) - 1) for row in grid]
    heights = [max(p.shape[0] for p in row) + title_rows for row in grid]
    image = np.zeros((sum(heights), max(widths), 3))
    anchors, y = [], 0
    for row, height in zip(grid, heights):
        x = 0
        for panel in row:
            image[y + height - panel.shape[0] : y + height, x : x + panel.shape[1]] = panel
            anchors.append((x + panel.shape[1] / 2, y + title_rows))
            x += panel.shape[1] + gap
        y += height
    return image, anchors


def _slice_image(grid, titles, aspect_grid, scale: ColourScale, label: str, width: float) -> bytes:
    """Rows of slices, each resampled to square pixels by its voxel aspect, drawn as one image enlarged by a
    whole factor (nearest voxel) to about 90% of `width` inches, with white titles over each slice and a
    colour bar."""

    def square(panel, a):
        if abs(a - 1.0) <= 1e-6:
            return panel
        from scipy.ndimage import zoom

        return zoom(panel, (max(a, 1.0), max(1.0 / a, 1.0), 1), order=0)

    grid = [[square(p, a) for p, a in zip(row, aspects)] for row, aspects in zip(grid, aspect_grid)]
    columns = max(sum(p.shape[1] for p in row) + 2 * (len(row) - 1) for row in grid)
    factor = max(1, round(0.9 * width * DPI / columns))
    tallest = max(p.shape[0] for row in grid for p in row)
    title_rows = max(6, tallest // 8, -(-15 // factor))  # room for 8-point titles at any enlargement
    image, anchors = _tile(grid, title_rows)
    image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    anchors = [(x * factor, y * factor - max(1, factor // 2)) for x, y in anchors]
    image = raster.add_text(image, anchors, titles, 8)
    bar = raster.colour_bar(round(0.76 * image.shape[0]), scale, label)
    return raster.encode_png(raster.side_by_side(image, bar))


def orthogonal_slices(
    background: NDArray, stat: NDArray, shown: NDArray, zooms, ijk, mm, scale: ColourScale, label: str = ""
) -> bytes:
    """Sagittal, coronal and axial slices through voxel `ijk` (RAS arrays), labelled with its mm position."""
    i, j, k = ijk
    grey = _grey_range(background)
    cuts = [np.s_[i, :, :], np.s_[:, j, :], np.s_[:, :, k]]
    panels = [_rgb(background[c], stat[c], shown[c], scale, grey) for c in cuts]
    aspects = [zooms[2] / zooms[1], zooms[2] / zooms[0], zooms[1] / zooms[0]]
    titles = [f"{axis} = {round(float(v), 1):g} mm" for axis, v in zip("xyz", mm)]
    return _slice_image([panels], titles, [aspects], scale, label, 10.0)


def mosaic(
    background: NDArray, stat: NDArray, shown: NDArray, zooms, slices, z_mm, scale: ColourScale, label: str = ""
) -> bytes:
    """Axial slices `slices` (RAS arrays), six to a row, each labelled with its z in mm."""
    grey = _grey_range(background)
    panels = [_rgb(background[:, :, k], stat[:, :, k], shown[:, :, k], scale, grey) for k in slices]
    grid = [panels[a : a + 6] for a in range(0, len(panels), 6)]
    aspects = [[zooms[1] / zooms[0]] * len(row) for row in grid]
    return _slice_image(grid, [f"z = {z:.0f}" for z in z_mm], aspects, scale, label, 12.0)


VIEW_PIXELS = (300, 420)  # (rows, columns) a view of a surface fills at most
SUPERSAMPLE = 2  # each view drawn at twice its size and averaged down: smooth edges


def _titled(image: NDArray, title: str, points: float) -> NDArray:
    """`image` under a white band with `title` centred in it."""
    text = raster.text_image(title, points)
    band = np.ones((text.shape[0] + 4, image.shape[1], 3))
    x = max(0, (image.shape[1] - text.shape[1]) // 2)
    band[2 : 2 + text.shape[0], x : x + text.shape[1]] = text[:, : image.shape[1] - x]
    return np.vstack([band, image])


def surface_views(
    coords: NDArray, faces: NDArray, stat: NDArray, shown: NDArray, scale: ColourScale, label: str = ""
) -> bytes:
    """Lateral and medial views of a hemisphere (orthographic, along the x axis, the same scale in both): grey
    shading by the surface's orientation, the statistic where `shown` (a triangle is coloured when two or three
    of its vertices are, by the mean of those, and every triangle of a vertex shown with no shown neighbour: a
    peak of one vertex, which the table lists, was drawn nowhere). Triangles facing away from the viewer are not
    drawn, and of those facing it the nearest shows, so the far side never shows through."""
    coords = np.asarray(coords, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    a, b, c = (coords[faces[:, k]].astype(np.float32) for k in range(3))
    normals = np.cross(b - a, c - a)
    normals /= np.sqrt(np.einsum("ij,ij->i", normals, normals)).clip(min=1e-12)[:, None]
    outwards = np.einsum("ij,ij->", normals, (a + b + c) / 3 - coords.mean(axis=0).astype(np.float32))
    if outwards < 0:  # triangles wound inwards: normals point in
        normals = -normals
    corners = shown[faces]
    count = corners.sum(axis=1)
    on = count >= 2
    drawn = np.zeros(len(shown), bool)
    drawn[faces[on].ravel()] = True
    on |= (shown & ~drawn)[faces].any(axis=1)  # (a shown vertex in no coloured triangle: its own triangles)
    values = np.where(corners, np.nan_to_num(stat[faces]), 0.0).sum(axis=1) / np.maximum(count, 1)
    colour = scale.rgb(values)
    left = coords[:, 0].mean() < 0  # a left hemisphere's lateral side faces -x
    low, high = coords.min(axis=0), coords.max(axis=0)
    middle = (low + high) / 2
    extent = np.maximum(high - low, 1e-6)
    rows, cols = VIEW_PIXELS
    mm = min(0.92 * cols / extent[1], 0.92 * rows / extent[2])  # pixels per mm: y across, z up
    views = []
    for title, azim in [("lateral", 180 if left else 0), ("medial", 0 if left else 180)]:
        view = np.array([np.cos(np.radians(azim)), np.sin(np.radians(azim)), 0.0])  # towards the viewer
        across = np.array([-view[1], view[0], 0.0])  # the screen's x axis
        facing = normals @ view > 0
        light = 0.35 + 0.55 * np.abs(normals[facing] @ view)
        rgb = np.where(on[facing, None], colour[facing], light[:, None])
        s = SUPERSAMPLE
        xy = np.column_stack(
            [((coords - middle) @ across * mm + cols / 2) * s, ((middle[2] - coords[:, 2]) * mm + rows / 2) * s]
        )
        image = raster.rasterise_triangles(xy, coords @ view, faces[facing], rgb, (rows * s, cols * s))
        image = raster.downsample(image, s)
        views.append(_titled(image, title, 9))
    bar = raster.colour_bar(round(0.8 * rows), scale, label)
    return raster.encode_png(raster.side_by_side(*views, bar))


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

"""Images drawn as pixel arrays, without a matplotlib figure: colour maps, titles and colour bars (text set by
Pillow in matplotlib's own font, DejaVu Sans), triangles of a mesh rasterised with a depth buffer, and PNG
encoding. A figure through matplotlib costs ~0.1-0.4 s (and seconds for a mesh of 300k triangles, one path
object per triangle); these take milliseconds.

Arrays are (rows, columns, 3) floats in [0, 1], row 0 at the top.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CellText",
    "ColourScale",
    "Line",
    "add_text",
    "colour_bar",
    "colour_scale",
    "downsample",
    "encode_png",
    "line_panels",
    "matrix_figure",
    "nice_ticks",
    "rdbu_r",
    "rasterise_triangles",
    "side_by_side",
    "text_image",
]

DPI = 96
PAD = 5  # pixels of white around a figure (matplotlib's pad_inches=0.05 at 96 dpi)

# ColorBrewer's RdBu, red to blue, as matplotlib's RdBu: 256 colours interpolated between these 11
_RDBU = "67001f b2182b d6604d f4a582 fddbc7 f7f7f7 d1e5f0 92c5de 4393c3 2166ac 053061"


def rdbu_r() -> NDArray:
    """matplotlib's RdBu_r as its 256-entry table (its reversed LinearSegmentedColormap.from_list, N=256)."""
    anchors = np.array([[int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] for h in _RDBU.split()])[::-1]
    x = np.linspace(0.0, 1.0, 256)
    return np.column_stack([np.interp(x, np.linspace(0.0, 1.0, len(anchors)), anchors[:, c]) for c in range(3)])


def _lookup(table: NDArray, x: NDArray) -> NDArray:
    """A colormap's colours at x in [0, 1] as matplotlib picks them from its table (the entry floor(x * N))."""
    n = len(table)
    return table[np.clip((np.asarray(x, dtype=np.float64) * n).astype(np.int64), 0, n - 1)]


@dataclasses.dataclass(frozen=True, eq=False)
class ColourScale:
    """A colour map over [vmin, vmax]: ``table`` (N, 3) RGB from vmin (row 0) to vmax."""

    vmin: float
    vmax: float
    table: NDArray

    def rgb(self, values) -> NDArray:
        """The colours of `values` (..., 3); values outside [vmin, vmax] take the end colours, NaN vmin's."""
        span = (self.vmax - self.vmin) or 1.0
        x = np.clip((np.nan_to_num(np.asarray(values, dtype=np.float64), nan=self.vmin) - self.vmin) / span, 0.0, 1.0)
        return _lookup(self.table, x)


def colour_scale(vmax: float, signed: bool) -> ColourScale:
    """The statistic overlays' colours: RdBu_r without its pale middle over [-vmax, vmax] (thresholded values
    stay visible on a light background), or its red half over [0, vmax] when only positive values are shown."""
    base = rdbu_r()
    high = _lookup(base, np.linspace(0.67, 1.0, 128))
    if not signed:
        return ColourScale(0.0, float(vmax), high)
    return ColourScale(-float(vmax), float(vmax), np.vstack([_lookup(base, np.linspace(0.0, 0.33, 128)), high]))


def encode_png(rgb: NDArray) -> bytes:
    """A (rows, columns, 3) float image in [0, 1] as PNG bytes (8 bits per channel)."""
    from PIL import Image

    pixels = np.ascontiguousarray(np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _font(points: float):
    """DejaVu Sans (matplotlib's default font, from its package data) at `points` on a 96-dpi page; Pillow's
    own font where matplotlib's file is missing."""
    import importlib.util
    from pathlib import Path

    from PIL import ImageFont

    pixels = max(1, round(points * DPI / 72))
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), pixels)
    try:
        return ImageFont.load_default(pixels)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def text_image(text: str, points: float, rotate: bool = False) -> NDArray:
    """`text` in black on white, cropped to its ink plus a pixel; read bottom to top when `rotate`."""
    from PIL import Image, ImageDraw

    font = _font(points)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (max(1, right - left + 2), max(1, bottom - top + 2)), 255)
    ImageDraw.Draw(image).text((1 - left, 1 - top), text, fill=0, font=font)
    grey = np.asarray(image.transpose(Image.Transpose.ROTATE_90) if rotate else image, dtype=np.float64) / 255.0
    return np.repeat(grey[..., None], 3, axis=2)


def add_text(rgb: NDArray, anchors, texts, points: float, colour=(1.0, 1.0, 1.0)) -> NDArray:
    """`rgb` with each text drawn centred on its (x, y bottom) anchor in pixels, in `colour`."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    fill = tuple(int(round(255 * c)) for c in colour)
    font = _font(points)
    for (x, y), text in zip(anchors, texts):
        draw.text((x, y), text, fill=fill, font=font, anchor="md")
    return np.asarray(image, dtype=np.float64) / 255.0


def nice_ticks(low: float, high: float, most: int = 6) -> tuple[NDArray, list[str]]:
    """Ticks over [low, high], at most `most` intervals apart, at a step of 1, 2, 2.5 or 5 times a power of ten
    (matplotlib's MaxNLocator; its colour bars take an interval per 20 points of height, at most 9), with labels
    of as many decimals as the step needs."""
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return np.array([low]), [f"{low:.3g}"]
    raw = span / most
    magnitude = 10.0 ** np.floor(np.log10(raw))
    factor = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    step = factor * magnitude
    ticks = np.arange(np.ceil(low / step - 1e-9), np.floor(high / step + 1e-9) + 1) * step
    decimals = max(0, -int(np.floor(np.log10(step) + 1e-9))) + (1 if factor == 2.5 else 0)
    return ticks, [f"{t + 0.0:.{decimals}f}" for t in np.round(ticks, decimals)]


def colour_bar(height: int, scale: ColourScale, label: str) -> NDArray:
    """A vertical colour bar `height` pixels tall on white (vmax at the top, outlined), its ticks and their
    values on its right, and `label` beside them read bottom to top."""
    bar_width, tick = 15, 5
    height = max(int(height), 40)
    ramp = scale.rgb(np.linspace(scale.vmax, scale.vmin, height))
    ticks, texts = nice_ticks(scale.vmin, scale.vmax, min(9, max(1, int(height * 72 / DPI / 20))))
    labels = [text_image(t, 10) for t in texts]
    title = text_image(label, 10, rotate=True) if label else np.ones((1, 1, 3))
    half = max((lab.shape[0] for lab in labels), default=0) // 2 + 1
    width = bar_width + tick + 3 + max((lab.shape[1] for lab in labels), default=0) + 6 + title.shape[1]
    panel = np.ones((height + 2 * half, width, 3))
    top = half
    panel[top : top + height, :bar_width] = ramp[:, None, :]
    panel[top, :bar_width] = panel[top + height - 1, :bar_width] = 0.0  # the outline
    panel[top : top + height, 0] = panel[top : top + height, bar_width - 1] = 0.0
    span = (scale.vmax - scale.vmin) or 1.0
    for value, text in zip(ticks, labels):
        y = top + int(round((scale.vmax - value) / span * (height - 1)))
        panel[y, bar_width : bar_width + tick] = 0.0
        y0 = min(max(y - text.shape[0] // 2, 0), panel.shape[0] - text.shape[0])
        x0 = bar_width + tick + 3
        panel[y0 : y0 + text.shape[0], x0 : x0 + text.shape[1]] = np.minimum(
            panel[y0 : y0 + text.shape[0], x0 : x0 + text.shape[1]], text
        )
    y0 = top + max(0, (height - title.shape[0]) // 2)
    rows = min(title.shape[0], panel.shape[0] - y0)
    panel[y0 : y0 + rows, width - title.shape[1] :] = title[:rows]
    return panel


def side_by_side(*images: NDArray, gap: int = 20, pad: int = PAD) -> NDArray:
    """Images left to right on white, centred vertically, `gap` pixels apart, `pad` around."""
    height = max(im.shape[0] for im in images) + 2 * pad
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1) + 2 * pad
    out = np.ones((height, width, 3))
    x = pad
    for im in images:
        y = (height - im.shape[0]) // 2
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


def rasterise_triangles(
    xy: NDArray, depth: NDArray, triangles: NDArray, colours: NDArray, shape, background=(1.0, 1.0, 1.0)
) -> NDArray:
    """Flat-coloured triangles drawn into an image of `shape` (rows, columns), the nearest where they overlap.

    Parameters
    ----------
    xy : array, shape (V, 2)
        The vertices' positions in pixels (x to the right, y down; pixel (r, c) spans [c, c + 1) x [r, r + 1)).
    depth : array, shape (V,)
        Their nearness to the viewer (larger is nearer), interpolated across each triangle.
    triangles : array of int, shape (k, 3)
    colours : array, shape (k, 3)
        One colour per triangle.

    A pixel takes the nearest triangle that holds its centre (edges included). The pixels tested are each
    triangle's bounding square: triangles with squares of the same side are handled together, as a
    (triangles x pixels of the square) array of barycentric coordinates, linear in the pixel's position (no
    per-pixel gathers), in batches of about a million pixels, so memory stays bounded.
    """
    rows, cols = int(shape[0]), int(shape[1])
    nearest = np.full(rows * cols, -np.inf)
    owner = np.full(rows * cols, -1, dtype=np.int64)
    triangles = np.asarray(triangles)
    x, y, depth = (np.asarray(v, dtype=np.float64) for v in (xy[:, 0], xy[:, 1], depth))
    ax, bx, cx = (x[triangles[:, k]] for k in range(3))
    ay, by, cy = (y[triangles[:, k]] for k in range(3))
    za, zb, zc = (depth[triangles[:, k]] for k in range(3))
    area = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    x0 = np.maximum(np.ceil(np.minimum(np.minimum(ax, bx), cx) - 0.5), 0).astype(np.int64)
    x1 = np.minimum(np.floor(np.maximum(np.maximum(ax, bx), cx) - 0.5), cols - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(np.minimum(np.minimum(ay, by), cy) - 0.5), 0).astype(np.int64)
    y1 = np.minimum(np.floor(np.maximum(np.maximum(ay, by), cy) - 0.5), rows - 1).astype(np.int64)
    side = np.maximum(x1 - x0, y1 - y0) + 1
    side[(x1 < x0) | (y1 < y0) | (np.abs(area) <= 1e-12)] = 0  # off the image, or no area: nothing to draw
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # (no area: never drawn)
        # the barycentric weights of a and b and the depth at pixel centre (x + 0.5, y + 0.5): u0 + u1 x + u2 y
        ka = np.stack([by - cy, cx - bx]) / area
        kb = np.stack([cy - ay, ax - cx]) / area
        coefficients = np.stack(  # at the square's first pixel (x0, y0), and their steps along x and y
            [
                ka[0] * (x0 + 0.5 - cx) + ka[1] * (y0 + 0.5 - cy),
                ka[0],
                ka[1],
                kb[0] * (x0 + 0.5 - cx) + kb[1] * (y0 + 0.5 - cy),
                kb[0],
                kb[1],
            ]
        )
    dz0, dz1 = za - zc, zb - zc
    order = np.argsort(side, kind="stable")
    sides, starts = np.unique(side[order], return_index=True)
    for n, s in enumerate(sides):
        if s == 0:
            continue
        group = order[starts[n] : starts[n + 1] if n + 1 < len(starts) else len(order)]
        dy, dx = (v.ravel().astype(np.float64) for v in np.divmod(np.arange(s * s), s))
        step = max(1, (1 << 20) // int(s * s))
        for first in range(0, group.size, step):
            t = group[first : first + step]
            c = coefficients[:, t, None]
            la = c[0] + c[1] * dx + c[2] * dy
            lb = c[3] + c[4] * dx + c[5] * dy
            inside = (la >= -1e-9) & (lb >= -1e-9) & (la + lb <= 1.0 + 1e-9)
            inside &= (dx <= (x1 - x0)[t, None]) & (dy <= (y1 - y0)[t, None])  # within the image
            which, k = np.nonzero(inside)
            tri = t[which]
            la, lb = la[which, k], lb[which, k]
            pixel = (y0[tri] + dy[k].astype(np.int64)) * cols + x0[tri] + dx[k].astype(np.int64)
            z = zc[tri] + la * dz0[tri] + lb * dz1[tri]
            np.maximum.at(nearest, pixel, z)
            won = z >= nearest[pixel]
            owner[pixel[won]] = tri[won]
    table = np.vstack([np.asarray(background, dtype=np.float64), np.asarray(colours, dtype=np.float64)])
    return np.take(table, owner + 1, axis=0).reshape(rows, cols, 3)  # row 0: the background


def downsample(image: NDArray, factor: int) -> NDArray:
    """The mean of each `factor` x `factor` block of pixels (rows and columns multiples of `factor`)."""
    out = np.zeros((image.shape[0] // factor, image.shape[1] // factor, image.shape[2]))
    for i in range(factor):
        for j in range(factor):
            out += image[i::factor, j::factor]
    return out / (factor * factor)


def _rotated_text(text: str, points: float, degrees: float) -> NDArray:
    """`text` in black on white turned `degrees` anticlockwise (its end at the image's top right for 0-90)."""
    from PIL import Image

    grey = text_image(text, points)[..., 0]
    image = Image.fromarray(np.round(grey * 255).astype(np.uint8), "L")
    turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    grey = np.asarray(turned, dtype=np.float64) / 255.0
    return np.repeat(grey[..., None], 3, axis=2)


def _paste_ink(canvas: NDArray, ink: NDArray, top: int, left: int) -> None:
    """Dark pixels of `ink` (black on white) drawn onto `canvas` at (top, left), clipped to it."""
    top, left = int(top), int(left)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + ink.shape[0], canvas.shape[0]), min(left + ink.shape[1], canvas.shape[1])
    if r1 > r0 and c1 > c0:
        part = ink[r0 - top : r1 - top, c0 - left : c1 - left]
        canvas[r0:r1, c0:c1] = np.minimum(canvas[r0:r1, c0:c1], part)


@dataclasses.dataclass(frozen=True)
class CellText:
    """A text written over a matrix's cell (row, column), in white or black, optionally read bottom to top."""

    row: int
    column: int
    text: str
    white: bool = False
    vertical: bool = False
    points: float = 8


def matrix_figure(
    cells: NDArray,
    size: tuple[int, int],
    names,
    *,
    name_points: float = 8,
    row_ticks: tuple[NDArray, list[str]] | None = None,
    row_label: str = "",
    row_points: float = 10,
    texts=(),
    frames=(),
) -> NDArray:
    """A matrix of coloured cells (rows, columns, 3) drawn `size` = (height, width) pixels, framed, each column
    named below (names turned 60 degrees, their ends at the column's tick), rows ticked at `row_ticks`
    (positions in rows, labels, in `row_points` type) with `row_label` beside them; `texts` (:class:`CellText`)
    written over cells, `frames` (column numbers) outlined in dark grey; a column named '' or None is not
    ticked. On white, as matplotlib draws an image in axes."""
    n_rows, n_cols = cells.shape[:2]
    height, width = max(int(size[0]), 1), max(int(size[1]), n_cols)
    rows = np.minimum((np.arange(height) * n_rows) // height, n_rows - 1)
    columns = np.minimum((np.arange(width) * n_cols) // width, n_cols - 1)
    body = cells[rows][:, columns]
    cell_w, cell_h = width / n_cols, height / n_rows
    grid = np.ones((height + 2, width + 2, 3)) * 0.0  # the frame
    grid[1:-1, 1:-1] = body
    for j in frames:  # a column outlined inside the frame
        left, right = 1 + int(round(j * cell_w)), int(round((j + 1) * cell_w))
        grid[1:-1, [left, right]] = 0.2
        grid[[1, -2], left : right + 1] = 0.2
    centres = [1 + (j + 0.5) * cell_w for j in range(n_cols)]
    for item in texts:
        ink = text_image(item.text, item.points, rotate=item.vertical)
        if item.white:
            ink = 1.0 - ink
        x = 1 + (item.column + 0.5) * cell_w - ink.shape[1] / 2
        y = 1 + (item.row + 0.5) * cell_h - ink.shape[0] / 2
        top, left = int(round(y)), int(round(x))
        r0, c0 = max(top, 1), max(left, 1)
        r1, c1 = min(top + ink.shape[0], grid.shape[0] - 1), min(left + ink.shape[1], grid.shape[1] - 1)
        if r1 > r0 and c1 > c0:
            part = ink[r0 - top : r1 - top, c0 - left : c1 - left]
            region = grid[r0:r1, c0:c1]
            grid[r0:r1, c0:c1] = np.maximum(region, part) if item.white else np.minimum(region, part)
    labels = [_rotated_text(name, name_points, 60) if name else None for name in names]
    drawn = [(x, lab) for x, lab in zip(centres, labels) if lab is not None]
    below = max((lab.shape[0] for _, lab in drawn), default=0) + 8
    ticks, tick_texts = row_ticks if row_ticks is not None else (np.array([]), [])
    tick_images = [text_image(t, row_points) for t in tick_texts]
    ylabel = text_image(row_label, 10, rotate=True) if row_label else np.ones((1, 0, 3))
    tick_space = max((im.shape[1] for im in tick_images), default=0) + (8 if tick_images else 0)
    overhang = max((lab.shape[1] - 2 - int(round(x)) for x, lab in drawn), default=0)  # names reach left
    left_of = max(ylabel.shape[1] + 4 + tick_space, overhang)
    canvas = np.ones((grid.shape[0] + below + 2 * PAD, left_of + grid.shape[1] + 2 * PAD, 3))
    top, left = PAD, PAD + left_of
    canvas[top : top + grid.shape[0], left : left + grid.shape[1]] = grid
    bottom = top + grid.shape[0]
    for x, label in drawn:
        tick_x = left + int(round(x))
        canvas[bottom : bottom + 4, tick_x] = 0.0
        _paste_ink(canvas, label, bottom + 6, tick_x - label.shape[1] + 2)
    for value, image in zip(ticks, tick_images):
        y = top + 1 + int(round((value + 0.5) * cell_h))
        canvas[y, left - 4 : left] = 0.0
        _paste_ink(canvas, image, y - image.shape[0] // 2, left - 6 - image.shape[1])
    if row_label:
        _paste_ink(canvas, ylabel, top + (grid.shape[0] - ylabel.shape[0]) // 2, PAD)
    return canvas


TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@dataclasses.dataclass(frozen=True)
class Line:
    """One curve of a panel: its values over the shared x, its name in the legend, its width in points."""

    y: NDArray
    name: str
    points: float = 1.4


def _rgb_of(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def _limits(low: float, high: float) -> tuple[float, float]:
    """Data limits with matplotlib's 5% margins."""
    span = (high - low) or 1.0
    return low - 0.05 * span, high + 0.05 * span


def line_panels(x: NDArray, panels, size: tuple[int, int], gap: int, xlabel: str) -> NDArray:
    """Panels of curves over a shared x axis, one above the other, as matplotlib's subplots with ``sharex``:
    each `size` = (height, width) pixels, framed, with a grey line at 0, its y ticks (7 points) on the left and
    its legend on the right (8 points, matplotlib's colours in turn); x ticks on every panel, their values and
    `xlabel` under the last. `panels` holds lists of :class:`Line`. Curves drawn at twice the size and
    averaged down: smooth."""
    from PIL import Image, ImageDraw

    height, width = size
    s = 2
    x_low, x_high = _limits(float(x[0]), float(x[-1]))
    x_ticks, x_texts = nice_ticks(x_low, x_high, min(9, max(1, int(width * 72 / DPI / 40))))
    x_pixels = [int(round((v - x_low) / (x_high - x_low) * (width - 1))) for v in x_ticks]
    ranges = []
    for lines in panels:
        values = np.concatenate([np.asarray(line.y, dtype=np.float64) for line in lines] + [np.zeros(1)])
        y_low, y_high = _limits(float(np.nanmin(values)), float(np.nanmax(values)))
        y_ticks, y_texts = nice_ticks(y_low, y_high, min(9, max(1, int(height * 72 / DPI / 14))))
        ranges.append((y_low, y_high, y_ticks, [text_image(t, 7) for t in y_texts]))
    left = max((im.shape[1] for *_, labels in ranges for im in labels), default=0) + 8  # the panels' axes align
    blocks = []
    for n, (lines, (y_low, y_high, y_ticks, y_labels)) in enumerate(zip(panels, ranges)):
        image = Image.new("RGB", (width * s, height * s), (255, 255, 255))
        draw = ImageDraw.Draw(image)

        def to_pixels(xs, ys, y_low=y_low, y_high=y_high):
            return list(
                zip(
                    ((xs - x_low) / (x_high - x_low) * (width - 1) * s).tolist(),
                    ((y_high - ys) / (y_high - y_low) * (height - 1) * s).tolist(),
                )
            )

        draw.line(to_pixels(np.array([x_low, x_high]), np.zeros(2)), fill=(153, 153, 153), width=2)
        for k, line in enumerate(lines):
            line_width = max(1, round(line.points * DPI / 72 * s))
            colour = _rgb_of(TAB10[k % 10])
            draw.line(to_pixels(np.asarray(x, float), np.asarray(line.y, float)), fill=colour, width=line_width)
        axes = downsample(np.asarray(image, dtype=np.float64) / 255.0, s)
        axes[[0, -1], :] = 0.0
        axes[:, [0, -1]] = 0.0
        legend = [(line, text_image(line.name, 8)) for line in lines]
        right = 8 + 22 + 6 + max((im.shape[1] for _, im in legend), default=0)
        last = n == len(panels) - 1
        x_labels = [text_image(t, 7) for t in x_texts] if last else []
        title = text_image(xlabel, 10) if last else np.ones((0, 1, 3))
        below = (max((im.shape[0] for im in x_labels), default=0) + 8 + title.shape[0] + 2) if last else 4
        block = np.ones((height + 6 + below, left + width + right, 3))
        top = 6
        block[top : top + height, left : left + width] = axes
        for value, label in zip(y_ticks, y_labels):
            y = top + int(round((y_high - value) / (y_high - y_low) * (height - 1)))
            block[y, left - 4 : left] = 0.0
            _paste_ink(block, label, y - label.shape[0] // 2, left - 6 - label.shape[1])
        for k, pixel in enumerate(x_pixels):
            block[top + height : top + height + 4, left + pixel] = 0.0
            if last:
                label = x_labels[k]
                _paste_ink(block, label, top + height + 6, left + pixel - label.shape[1] // 2)
        if last:
            _paste_ink(block, title, block.shape[0] - title.shape[0] - 2, left + (width - title.shape[1]) // 2)
        y = top + 6
        for k, (line, label) in enumerate(legend):
            colour = np.array(_rgb_of(TAB10[k % 10])) / 255.0
            thick = max(1, round(line.points * DPI / 72))
            middle = y + label.shape[0] // 2
            block[middle - thick // 2 : middle - thick // 2 + thick, left + width + 8 : left + width + 30] = colour
            _paste_ink(block, label, y, left + width + 36)
            y += label.shape[0] + 6
        blocks.append(block)
    columns = max(b.shape[1] for b in blocks)
    out = np.ones((sum(b.shape[0] for b in blocks) + gap * (len(blocks) - 1) + 2 * PAD, columns + 2 * PAD, 3))
    y = PAD
    for b in blocks:
        out[y : y + b.shape[0], PAD : PAD + b.shape[1]] = b
        y += b.shape[0] + gap
    return out

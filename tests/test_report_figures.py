"""The report's figures drawn without matplotlib (voxfit.report._raster): colours as matplotlib's, triangles as a
brute-force loop draws them, ticks at round steps, and reports on surfaces that load neither matplotlib nor
numba."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from voxfit.cli import main

from .imaging import write_gifti, write_icosahedron

pytest.importorskip("matplotlib")
from PIL import Image  # Pillow comes with matplotlib

from voxfit.report import _figures as figures  # noqa: E402
from voxfit.report import _raster as raster  # noqa: E402


@pytest.mark.parametrize("signed", [False, True])
def test_colours_are_matplotlibs(signed):
    """The overlay's colours equal those of matplotlib's RdBu_r cut as the report cut it (a ListedColormap of
    its samples over a Normalize), ends and out-of-range values included."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, Normalize

    base = colormaps["RdBu_r"]
    high = base(np.linspace(0.67, 1.0, 128))
    if signed:
        cmap, norm = ListedColormap(np.vstack([base(np.linspace(0.0, 0.33, 128)), high])), Normalize(-4.0, 4.0)
    else:
        cmap, norm = ListedColormap(high), Normalize(0.0, 4.0)
    values = np.r_[np.random.default_rng(0).uniform(-6, 6, 5000), -4.0, 0.0, 4.0, 1e-9, 3.9999999]
    expected = cmap(np.clip(norm(values), 0.0, 1.0))[:, :3]
    np.testing.assert_allclose(raster.colour_scale(4.0, signed).rgb(values), expected, atol=1e-12)
    full = raster.ColourScale(-1.0, 1.0, raster.rdbu_r())
    np.testing.assert_allclose(full.rgb(values / 6), base(Normalize(-1, 1)(values / 6))[:, :3], atol=1e-12)


def _brute_force_triangles(xy, depth, triangles, shape):
    """For each pixel centre, every triangle holding it (signs of the three edge functions, edges included),
    the nearest by its plane's depth there: the triangle's number, -1 where none."""
    owner = np.full(shape, -1)
    for r in range(shape[0]):
        for c in range(shape[1]):
            p = np.array([c + 0.5, r + 0.5])
            best = -np.inf
            for t, (i, j, k) in enumerate(triangles):
                a, b, q = xy[i], xy[j], xy[k]
                area = (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])
                if abs(area) < 1e-12:
                    continue
                w = [
                    ((b[0] - p[0]) * (q[1] - p[1]) - (b[1] - p[1]) * (q[0] - p[0])) / area,
                    ((q[0] - p[0]) * (a[1] - p[1]) - (q[1] - p[1]) * (a[0] - p[0])) / area,
                    ((a[0] - p[0]) * (b[1] - p[1]) - (a[1] - p[1]) * (b[0] - p[0])) / area,
                ]
                if min(w) < -1e-9:
                    continue
                z = w[0] * depth[i] + w[1] * depth[j] + w[2] * depth[k]
                if z > best:
                    best, owner[r, c] = z, t
    return owner


def test_triangles_drawn_as_a_loop_draws_them():
    """Overlapping triangles of every size (sub-pixel to wider than the image, some reaching past its edges,
    some without area) and tilted depths: each pixel shows the nearest triangle holding its centre."""
    rng = np.random.default_rng(3)
    shape = (23, 31)
    sizes = np.r_[np.full(25, 0.8), np.full(25, 4.0), np.full(8, 20.0), np.full(2, 60.0)]
    centres = rng.uniform([-5, -5], [36, 28], (sizes.size, 2))
    xy = (centres[:, None, :] + rng.uniform(-1, 1, (sizes.size, 3, 2)) * sizes[:, None, None]).reshape(-1, 2)
    triangles = np.arange(xy.shape[0]).reshape(-1, 3)
    xy[triangles[-3:, 2]] = xy[triangles[-3:, 0]]  # three without area
    depth = rng.uniform(0, 10, xy.shape[0])
    colours = np.column_stack([np.arange(len(triangles)) / 100.0, np.zeros(len(triangles)), np.ones(len(triangles))])
    image = raster.rasterise_triangles(xy, depth, triangles, colours, shape, background=(1.0, 1.0, 0.0))
    owner = np.where(image[..., 2] == 0.0, -1, np.round(image[..., 0] * 100).astype(int))
    expected = _brute_force_triangles(xy, depth, triangles, shape)
    assert (expected >= 0).mean() > 0.5 and len(np.unique(expected)) > 20
    np.testing.assert_array_equal(owner, expected)


@pytest.mark.parametrize(("low", "high", "most"), [(0, 6.9, 9), (0, 1, 6), (-3.2, 3.2, 9), (0, 179, 9), (0, 0.013, 5)])
def test_ticks_at_round_steps(low, high, most):
    ticks, labels = raster.nice_ticks(low, high, most)
    step = np.diff(ticks)
    assert low - 1e-12 <= ticks[0] and ticks[-1] <= high + 1e-12 and 2 <= ticks.size <= most + 1
    np.testing.assert_allclose(step, step[0])
    mantissa = step[0] / 10 ** np.floor(np.log10(step[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5)) < 1e-9
    assert ticks[0] - low < step[0] and high - ticks[-1] < step[0]  # no room for one more at either end
    np.testing.assert_allclose([float(t) for t in labels], ticks, atol=1e-12)


def test_far_side_of_a_surface_never_shows(tmp_path):
    """A left hemisphere's lateral side (-x) shown in red: red in the lateral view, none in the medial view,
    which looks at the other side through the whole surface."""
    import nibabel as nib

    image = nib.load(write_icosahedron(tmp_path / "m.surf.gii"))
    coords, faces = image.darrays[0].data.astype(float) - [10.0, 0.0, 0.0], image.darrays[1].data
    shown = coords[:, 0] < -11.5  # the two vertices at x = -phi: the triangles on their edge face -x
    png = figures.surface_views(coords, faces, np.where(shown, 5.0, 0.0), shown, figures.colour_scale(5.0, False))
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    red = (rgb[..., 0] - rgb[..., 2] > 40) & (rgb[..., 1] < 60)
    width = figures.VIEW_PIXELS[1]
    lateral, medial = red[:, : width + 5].sum(), red[:, width + 10 : 2 * width + 25].sum()
    assert lateral > 500 and medial == 0
    grey = (np.abs(rgb[..., 0] - rgb[..., 2]) < 3) & (rgb[..., 0] < 240)
    assert grey[:, width + 10 : 2 * width + 25].sum() > 5000  # the medial view is drawn, in grey


def _subdivided(coords, faces, times):
    """Each triangle split in four (midpoints on the sphere), winding kept: an icosphere."""
    coords, faces = [np.asarray(c, float) for c in coords], np.asarray(faces)
    for _ in range(times):
        middle, out = {}, []

        def mid(i, j):
            key = (min(i, j), max(i, j))
            if key not in middle:
                m = (coords[i] + coords[j]) / 2
                coords.append(m / np.linalg.norm(m) * np.linalg.norm(coords[i]))
                middle[key] = len(coords) - 1
            return middle[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            out += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = np.array(out)
    return np.array(coords), faces


def test_a_shown_vertex_with_no_shown_neighbour_is_drawn(tmp_path):
    """A triangle is coloured where two or three of its vertices are shown, so a vertex shown alone (a peak of
    one vertex, listed in the table) was drawn nowhere: its triangles are now coloured, and a cluster keeps its
    own outline (the triangles of one corner beside it stay grey)."""
    import nibabel as nib

    image = nib.load(write_icosahedron(tmp_path / "m.surf.gii"))
    coords, faces = _subdivided(image.darrays[0].data * 20.0, image.darrays[1].data, 2)
    coords -= [40.0, 0.0, 0.0]  # a left hemisphere: its lateral side faces -x
    lone = np.zeros(len(coords), bool)
    lone[np.argmin(coords[:, 0])] = True
    width = figures.VIEW_PIXELS[1]

    def red_pixels(shown):
        png = figures.surface_views(coords, faces, np.where(shown, 5.0, 0.0), shown, figures.colour_scale(5.0, False))
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
        return ((rgb[..., 0] - rgb[..., 2] > 40) & (rgb[..., 1] < 60))[:, : width + 5].sum()

    assert red_pixels(lone) > 20
    pair = lone.copy()
    pair[faces[np.any(faces == np.argmax(lone), axis=1)][0]] = True  # one of its triangles: three vertices
    ring = np.zeros(len(coords), bool)
    ring[faces[np.any(faces == np.argmax(lone), axis=1)].ravel()] = True
    assert 0 < red_pixels(pair) < red_pixels(ring)


def test_surface_report_loads_neither_matplotlib_nor_numba(tmp_path):
    """A group report on a mesh draws every figure as pixels and labels clusters by scipy: no matplotlib
    (~0.5-0.9 s to import), no numba (~0.8 s to load compiled kernels) in a fresh process."""
    rng = np.random.default_rng(2)
    mesh = write_icosahedron(tmp_path / "lh.surf.gii")
    paths = []
    for i in range(8):
        values = (rng.standard_normal(12) + np.r_[3.0, 3.0, 3.0, np.zeros(9)]).astype(np.float32)
        paths.append(write_gifti(tmp_path / f"s{i}.func.gii", values[None]))
    out = tmp_path / "g"
    assert main(["group", *map(str, paths), "--mesh", str(mesh), "-o", str(out), "--quiet"]) == 0
    code = (
        "import sys; from voxfit.report import build_report; page = build_report(sys.argv[1]); "
        "assert 'lateral and medial views' in page and 'Clusters (along the mesh' in page, page[-2000:]; "
        "print(sorted(m for m in ('matplotlib', 'numba') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_figures_are_pngs_of_the_expected_size():
    """Slices enlarged by a whole factor to about 90% of the figure's width, titles and a colour bar beside."""
    rng = np.random.default_rng(1)
    background = rng.uniform(0, 1, (10, 9, 8))
    stat = np.zeros_like(background)
    stat[2:4, 2:4, 2:4] = 5.0
    png = figures.orthogonal_slices(
        background, stat, stat > 0, (2.0, 2.0, 2.0), (3, 3, 3), (0, 0, 0), figures.colour_scale(5.0, False), "z"
    )
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    factor = round(0.9 * 10 * 96 / (9 + 10 + 10 + 4))
    assert image.shape[1] > factor * 33 + 40  # the slices and the colour bar
    image = image.astype(int)
    reds = (image[..., 0] - image[..., 2] > 40) & (image[..., 1] < 60)
    bar = image.shape[1] - 80  # the colour bar's reds are right of the slices
    assert reds[:, :bar].sum() == 3 * 4 * factor**2  # a 2 x 2 voxel patch in each of the three slices


def test_regressors_drawn_where_their_values_are():
    """A box-car over 40 scans: its curve (matplotlib's first colour) high in the first half's panel columns
    where it is on and at the zero line where it is off; a derivative in the same panel in the second colour."""
    box = np.r_[np.ones(20), np.zeros(20)]
    X = np.column_stack([box, np.gradient(box)])
    rgb = np.asarray(Image.open(io.BytesIO(figures.regressors(X, ["on", "on_d"], ["condition", "derivative"], 2.0))))
    rgb = rgb[..., :3].astype(int)
    blue = (np.abs(rgb - [31, 119, 180]).sum(axis=2) < 60).astype(float)
    orange = np.abs(rgb - [255, 127, 14]).sum(axis=2) < 60
    columns = np.flatnonzero(blue[:, : int(0.85 * rgb.shape[1])].any(axis=0))  # not the legend
    rows = np.arange(rgb.shape[0])
    height = [float(rows @ blue[:, c] / blue[:, c].sum()) for c in columns]  # mean row of the curve per column
    early, late = np.mean(height[: len(height) // 4]), np.mean(height[-len(height) // 4 :])
    assert early < late - 15  # on: higher on the page (smaller rows) than off, by 1 / 1.65 of the axes' height
    assert orange.sum() > 20

"""FSL FILM on surfaces (issue 19): the neighbourhood along the mesh, and ``voxfit fit --noise film --mesh``, in
memory and streamed under --max-memory, against FILM's fit with the mesh kernel built here."""

import json
from collections import deque

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit_images
from voxfit.cli import main
from voxfit.core.film import FILM_SIGMA_MM, mesh_kernel, mesh_rings
from voxfit.engine.noise_models import FilmSpace, fit_film
from voxfit.engine.streaming import fit_streaming
from voxfit.exceptions import InputError

from .imaging import write_gifti


def grid_mesh(nx, ny, spacing=2.0, z=0.0):
    """A flat sheet of nx x ny vertices `spacing` mm apart at height z, each square cut by alternating diagonals."""
    x, y = np.meshgrid(np.arange(nx) * spacing, np.arange(ny) * spacing, indexing="ij")
    coords = np.column_stack([x.ravel(), y.ravel(), np.full(nx * ny, z)])
    idx = np.arange(nx * ny).reshape(nx, ny)
    faces = []
    for i in range(nx - 1):
        for j in range(ny - 1):
            a, b, c, d = idx[i, j], idx[i + 1, j], idx[i, j + 1], idx[i + 1, j + 1]
            faces += [[a, b, d], [a, d, c]] if (i + j) % 2 else [[a, b, c], [b, d, c]]
    return coords, np.array(faces, dtype=np.int64)


def write_mesh(path, coords, faces):
    """A GIFTI surface (float32 vertices, int32 triangles)."""
    arrays = [
        nib.gifti.GiftiDataArray(coords.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE"),
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(path))
    return path


def _by_definition(coords, faces, mask, sigma, cap):
    """Each masked vertex's neighbours by breadth-first search over masked vertices: within the kernel's rings of
    edges and 2 sigma in space, the nearest `cap`, as {neighbour: weight} (numbered among the masked vertices)."""
    n = coords.shape[0]
    near = [set() for _ in range(n)]
    for a, b, c in faces:
        for u, v in ((a, b), (b, c), (c, a)):
            if mask[u] and mask[v]:
                near[u].add(v)
                near[v].add(u)
    lengths = [np.linalg.norm(coords[u] - coords[v]) for u in range(n) for v in near[u]]
    rings = mesh_rings(np.median(lengths), sigma, cap)
    number = np.cumsum(mask) - 1
    out = []
    for start in np.flatnonzero(mask):
        hops, queue = {start: 0}, deque([start])
        while queue:
            u = queue.popleft()
            if hops[u] < rings:
                for v in near[u]:
                    if v not in hops:
                        hops[v] = hops[u] + 1
                        queue.append(v)
        found = sorted((np.linalg.norm(coords[v] - coords[start]), number[v]) for v in hops if v != start)
        found = [(d, j) for d, j in found if d <= 2 * sigma][:cap]
        out.append({int(j): np.exp(-(d**2) / (2 * sigma**2)) for d, j in found})
    return out


def _kernel_sets(kernel):
    return [
        {int(j): w for j, w in zip(kernel.neighbours[:, i], kernel.weights[:, i]) if j >= 0}
        for i in range(kernel.neighbours.shape[1])
    ]


@pytest.mark.parametrize("cap", [96, 10])
def test_mesh_kernel_is_its_definition(cap):
    """On a sheet with a hole in its mask: each vertex's neighbours are the masked vertices within the kernel's
    rings of edges and 2 sigma in space, nearest first (the `cap` nearest), weighted exp(-d^2 / 2 sigma^2)."""
    coords, faces = grid_mesh(16, 14)
    mask = np.ones(coords.shape[0], dtype=bool)
    mask[[40, 41, 56, 57, 100]] = False
    kernel = mesh_kernel(coords, faces, mask, FILM_SIGMA_MM, max_neighbours=cap)
    expected = _by_definition(coords, faces, mask, FILM_SIGMA_MM, cap)
    got = _kernel_sets(kernel)
    assert len(got) == mask.sum()
    for mine, ref in zip(got, expected):
        assert mine.keys() == ref.keys()
        npt.assert_allclose([mine[j] for j in ref], list(ref.values()), rtol=1e-12)
    for column, count in zip(kernel.weights.T, (kernel.neighbours >= 0).sum(axis=0)):
        assert (np.diff(column[:count]) <= 1e-12).all()  # nearest first: the weights fall
    assert max(len(s) for s in got) == (cap if cap < 80 else max(len(s) for s in expected))
    small = mesh_kernel(coords, faces, mask, FILM_SIGMA_MM, max_neighbours=cap, chunk=16)  # as under a tight cap
    npt.assert_array_equal(small.neighbours, kernel.neighbours)
    npt.assert_array_equal(small.weights, kernel.weights)


def test_mesh_kernel_does_not_cross_to_a_surface_it_is_not_joined_to():
    """Two sheets 3 mm apart (the banks of a sulcus, near in space, not joined by the mesh): no vertex takes a
    neighbour from the other sheet, though half its neighbours by distance alone would be there."""
    top, top_faces = grid_mesh(12, 12, z=3.0)
    bottom, bottom_faces = grid_mesh(12, 12)
    coords = np.concatenate([top, bottom])
    faces = np.concatenate([top_faces, bottom_faces + top.shape[0]])
    kernel = mesh_kernel(coords, faces, np.ones(coords.shape[0], dtype=bool))
    sheet = np.arange(coords.shape[0]) >= top.shape[0]
    there = kernel.neighbours >= 0
    assert there.sum(axis=0).min() > 10
    assert (sheet[np.where(there, kernel.neighbours, 0)] == sheet[None, :])[there].all()


def _surface_run(tmp_path, rng, n=80, nx=14, ny=12):
    """A GIFTI series on a flat sheet (2 mm), AR(1) noise on a brightness varying over the sheet, the sheet's mesh,
    and a design (constant, blocks, drift)."""
    coords, faces = grid_mesh(nx, ny)
    V = coords.shape[0]
    e = rng.standard_normal((n, V))
    for t in range(1, n):
        e[t] += 0.5 * e[t - 1]
    t = np.arange(n)
    X = np.column_stack([np.ones(n), ((t // 8) % 2).astype(float), np.cos(np.pi * (t + 0.5) / n)])
    data = 800 + 50 * np.sin(coords[:, 0] / 6.0) + 4 * e
    data[:, :3] = 0.0  # a medial wall: constant, out of the mask
    path = write_gifti(tmp_path / "lh.bold.func.gii", data.astype(np.float32))
    mesh = write_mesh(tmp_path / "lh.midthickness.surf.gii", coords, faces)
    (tmp_path / "d.tsv").write_text(
        "c\tx1\tdrift\n" + "".join("\t".join(repr(float(v)) for v in row) + "\n" for row in X)
    )
    return path, mesh, X, data, coords.astype(np.float32).astype(np.float64), faces


CONTRASTS = {"b": [0, 1.0, 0], "both": [[0, 1.0, 0], [0, 0, 1.0]]}


@pytest.mark.usefixtures("no_reserve")
def test_film_on_a_surface_equals_the_fit_with_the_mesh_kernel(tmp_path, rng, monkeypatch):
    """fit_images(noise="film", mesh=...) on a GIFTI series: FILM's fit with the surface's kernel built from the
    same mesh by hand; model.json-bound settings say the mesh; the streamed fit under a small cap gives the same."""
    path, mesh, X, data, coords, faces = _surface_run(tmp_path, rng, n=600)
    names = ["c", "x1", "drift"]
    res = fit_images(path, (X, names), CONTRASTS, noise="film", mesh=mesh)
    mask = res.masker.mask
    assert mask.sum() == data.shape[1] - 3
    Y = data[:, mask].astype(np.float32).astype(np.float64)
    space = FilmSpace(mask, None, Y.mean(axis=0), mesh=(coords, faces))
    ref = fit_film(X, Y, CONTRASTS, space=space)
    npt.assert_allclose(res.contrasts["b"].t, ref.contrasts["b"].t, rtol=1e-7)
    npt.assert_allclose(res.contrasts["both"].F, ref.contrasts["both"].F, rtol=1e-7)
    plain = fit_film(X, Y, CONTRASTS)  # without the spatial step the numbers differ: the mesh was used
    assert np.abs(plain.contrasts["b"].t - ref.contrasts["b"].t).max() > 1e-3
    import voxfit.models.glm as glm

    calls = []
    monkeypatch.setattr(glm, "fit_streaming", lambda *a, **k: calls.append(k["mesh"]) or fit_streaming(*a, **k))
    # 600 scans x 168 vertices; the neighbourhood's search goes a few vertices at a time,
    # within what the sums leave; the cap the refusal names holds the sums and FILM's autocorrelations beside them
    with pytest.raises(InputError, match=r"\(0.2 MiB\) and FILM autocorrelations; give at least") as refused:
        fit_images(path, (X, names), CONTRASTS, noise="film", mesh=mesh, max_memory="450K")
    assert len(calls) == 1 and calls[0][0].shape == coords.shape  # streamed, with the mesh read
    cap = str(refused.value).split("give at least ")[1].rstrip(".")  # (data this small fit in memory under it)
    streamed = fit_streaming(path, X, CONTRASTS, names=names, film=True, mesh=calls[0], max_memory=cap)
    npt.assert_allclose(streamed.contrasts["b"].t, res.contrasts["b"].t, rtol=1e-6)


def test_command_line_film_on_a_surface_needs_its_mesh(tmp_path, rng, capsys):
    """``voxfit fit lh.func.gii --noise film --mesh lh.surf.gii`` writes GIFTI maps and records the mesh; without
    --mesh, or with a mesh of another surface, exit 2 and one line that says what to give."""
    path, mesh, X, data, coords, faces = _surface_run(tmp_path, rng)
    args = ["fit", str(path), "--design", str(tmp_path / "d.tsv"), "--contrast", "b=x1", "--noise", "film", "--quiet"]
    assert main([*args, "--mesh", str(mesh), "-o", str(tmp_path / "out")]) == 0
    details = json.loads((tmp_path / "out" / "model.json").read_text())["settings"]["noise_details"]
    assert details["mesh"] == str(mesh) and details["spatial_smoothing"] == "SUSAN-like"
    assert "surface mesh" in details["neighbours"]
    t = nib.load(tmp_path / "out" / "contrast-b_stat-t_statmap.func.gii").darrays[0].data
    assert np.isfinite(t[3:]).all()
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "no_mesh")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mesh" in err
    other, other_faces = grid_mesh(5, 5)
    wrong = write_mesh(tmp_path / "other.surf.gii", other, other_faces)
    assert main([*args, "--mesh", str(wrong), "-o", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "25 vertices" in err
    assert not (tmp_path / "no_mesh").exists() and not (tmp_path / "wrong").exists()
    with pytest.raises(InputError, match="--mesh"):
        fit_images(path, (X, ["c", "x1", "drift"]), CONTRASTS, noise="film")


def test_a_mesh_for_data_that_are_not_a_surface_is_refused(tmp_path, rng):
    """--mesh names the surface of surface data: with a volume it is refused in one line, before any fit."""
    mesh = write_mesh(tmp_path / "lh.surf.gii", *grid_mesh(4, 4))
    volume = nib.Nifti1Image(rng.standard_normal((3, 3, 2, 30)).astype(np.float32) + 100, np.eye(4))
    X = np.column_stack([np.ones(30), np.arange(30) % 2])
    with pytest.raises(InputError, match="is the surface of surface data, but the data are a volume"):
        fit_images(volume, (X, ["c", "x"]), {"b": [0, 1.0]}, noise="film", mesh=mesh, mask_threshold=0)

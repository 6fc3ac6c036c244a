"""Per-voxel noise models beyond AR(p), block by block: FSL's FILM, AFNI's ARMA(1,1), and AR(p) with the order
chosen per voxel (``--noise film``, ``arma11``, ``auto``); see ``voxfit.core.film`` and ``voxfit.core.arma``.

Blocks of voxels share nothing but FILM's spatial step, which is a pass over the small (V, M+1) maps of raw
autocorrelations between a first pass (OLS residual lagged products) and the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .._array import finite_columns
from .._execution import Execution
from .._memory import cap_text, reserved_bytes
from .._threads import blas_single_threaded, run_in_threads
from ..core import Fit, Stats, check_contrast, factorize
from ..core.ar import ARBlock, check_ar_terms, fit_ar_block
from ..core.arma import ARMA_GRID, arma_terms, fit_arma_block
from ..core.ols import exact_fits
from ..core.film import (
    FILM_SIGMA_MM,
    MESH_CHUNK,
    MESH_NEIGHBOURS,
    MIN_MESH_CHUNK,
    SMOOTH_CHUNK,
    film_lags,
    raw_autocorrelations,
    residual_lagged_products,
    select_ar_order,
    smooth_autocorrelations,
    susan_brightness_threshold,
    tukey_taper,
    mesh_kernel,
    mesh_kernel_bytes,
    mesh_kernel_chunk,
    volume_kernel,
    volume_kernel_bytes,
)
from ..exceptions import InputError
from .ar import ARMaps
from .fit import check_fit_inputs

__all__ = [
    "AUTO_MAX_ORDER",
    "FilmSpace",
    "NoiseModelFit",
    "check_film_geometry",
    "film_autocorrelations",
    "film_space",
    "fit_arma11",
    "fit_auto_ar",
    "fit_film",
]

AUTO_MAX_ORDER = 8


@dataclass(frozen=True, eq=False)
class FilmSpace:
    """Where FILM's spatial step smooths: the mask `mask` (a volume's grid, 3-D bool [x, y, z], with the data's
    voxels in x-fastest order; a surface's vertices, 1-D bool), the voxel sizes `voxel_mm` (3,; volumes), the mean
    functional image `brightness` (V,) for SUSAN's weights, the kernel's `sigma_mm`, and a surface's mesh `mesh`
    (vertex coordinates (n, 3) in mm, triangles (F, 3); None for a volume)."""

    mask: np.ndarray
    voxel_mm: np.ndarray | None
    brightness: np.ndarray
    sigma_mm: float = FILM_SIGMA_MM
    mesh: tuple[np.ndarray, np.ndarray] | None = None
    chunk: int = MESH_CHUNK  # vertices whose neighbours are searched together (``core.film.mesh_kernel_chunk``)

    def kernel(self):
        """The neighbourhood of the spatial step (``voxfit.core.film``)."""
        if self.mesh is None:
            return volume_kernel(self.mask, self.voxel_mm, self.sigma_mm)
        return mesh_kernel(*self.mesh, self.mask, self.sigma_mm, chunk=self.chunk)


@dataclass(frozen=True, eq=False)
class NoiseModelFit:
    """A per-voxel noise model's fit: the fit (whitened betas and residual variance; R^2 of the OLS fit), each
    contrast's statistics, the noise parameters (k, V) named by `parameter_names`, the AR order chosen per
    voxel (`orders`, V; None but for ``auto``), and the settings used (`info`, for model.json)."""

    fit: Fit
    contrasts: dict[str, Stats]
    parameters: np.ndarray
    parameter_names: list[str]
    orders: np.ndarray | None
    info: dict


def _prepare(X, Y, contrasts, names, execution):
    """The design factorised, the data checked, the threads and each contrast's weights."""
    design = factorize(X, names, max_memory=execution.max_memory)
    Y, n_jobs = check_fit_inputs(X, Y, design.n_scans, execution.n_jobs)
    weights = {label: check_contrast(expr, design, label) for label, expr in contrasts.items()}
    return design, Y, n_jobs, weights


ARMA_BLOCK = 512  # voxels per ARMA(1,1) block at most: its transforms stay in cache (14 us a voxel, 15.4 at 1,400)


def _step(n: int, pc: int, k: int, execution: Execution, workers: int) -> int:
    """Voxels per block: as many as the ``ar_block`` budget holds per worker (k: the model's parameters)."""
    per_voxel = 8 * (4 * n + 3 * pc * pc + 4 * (k + 1) ** 2 + (k + 4) * pc + 2 * n * pc)
    budget = execution.budgets.ar_block // max(1, workers)
    if budget < per_voxel:
        raise InputError(
            f"`max_memory`={execution.max_memory!r} is too small for this fit: one voxel needs {per_voxel} bytes."
        )
    return int(max(1, min(4096, budget // per_voxel)))


def _run_blocks(V: int, step: int, n_jobs: int, task) -> None:
    """`task(start)` for every block of `step` voxels, in threads (stoppable between blocks)."""
    starts = range(0, V, step)
    with blas_single_threaded():
        run_in_threads(task, starts, min(n_jobs, len(starts)))


def fit_film(
    X, Y, contrasts: dict, *, names=None, space: FilmSpace | None = None, execution: Execution | None = None
) -> NoiseModelFit:
    """FSL FILM per voxel (``voxfit.core.film``): raw OLS-residual autocorrelations at lags 0..M (M = round(sqrt
    n)), smoothed within the mask by the SUSAN-like filter of `space` (None: no spatial step), Tukey-tapered,
    whitened by the AR(M) filter reproducing them, refitted; t and F on ``n - rank`` degrees of freedom."""
    execution = execution or Execution()
    design = factorize(X, names, max_memory=execution.max_memory)
    n = design.n_scans
    M = film_lags(n)
    if n <= 2 * M + design.rank:
        raise InputError(f"film needs more than {2 * M + design.rank} scans for its {M} lags; the data have {n}.")
    check_ar_terms(design, M, execution.max_memory)  # (before the first pass over the data, not after it)
    design, Y, n_jobs, weights = _prepare(X, Y, contrasts, names, execution)
    V, pc = Y.shape[1], design.X.shape[1]
    if space is not None and space.brightness.shape != (V,):
        raise InputError(f"film's brightness image has {space.brightness.shape[0]} voxels; the data have {V}.")
    step = _step(n, pc, M, execution, n_jobs)
    lagged = np.zeros((M + 1, V))
    valid = np.zeros(V, dtype=bool)

    def first(start: int) -> None:
        ok, Yb = finite_columns(Y[:, start : start + step])
        valid[start : start + ok.size] = ok
        if ok.any():
            Yb = np.asarray(Yb, dtype=np.float64)
            Yb = Yb - Yb.mean(axis=0) if design.exact_intercept else Yb  # (the residuals unchanged)
            lagged[:, start + np.flatnonzero(ok)] = residual_lagged_products(design.basis, Yb, M)

    _run_blocks(V, step, n_jobs, first)
    rho, info = film_autocorrelations(lagged, valid, space)
    block = ARBlock(design, M, max_memory=execution.max_memory)
    maps = ARMaps(pc, M, weights, V)

    def second(start: int) -> None:
        ok = valid[start : start + step]
        if not ok.any():
            return
        at = start + np.flatnonzero(ok)
        Yb = np.asarray(Y[:, start : start + ok.size])[:, ok]
        maps.place(at, fit_ar_block(block, Yb, list(weights.values()), lambda _r, at=at: rho[at]))

    _run_blocks(V, step, n_jobs, second)
    fit, stats = maps.result(design, valid, n_jobs)
    return NoiseModelFit(fit, stats, maps.phi, [f"ar{k + 1}" for k in range(M)], None, info)


def film_space(
    masker, brightness, mesh=None, execution: Execution | None = None, budget: int | None = None
) -> FilmSpace:
    """FILM's neighbourhood for the voxels of `masker`: a volume's grid and voxel sizes (from the affine), or a
    surface's `mesh` (vertex coordinates and triangles, as ``voxfit.io.readers.read_mesh`` returns them); the mean
    image `brightness` (V,). Refused in one line for anything else (see :func:`check_film_geometry`), and for a
    surface whose neighbourhood the memory cap of `execution` cannot hold beside the interpreter (or within
    `budget` bytes, where a streamed fit's sums hold the rest)."""
    geometry = getattr(masker, "geometry", None)
    check_film_geometry(geometry, mesh)
    if geometry.kind == "surface":
        mask = np.asarray(masker.mask, dtype=bool)
        cap = None if execution is None else execution.budgets.process
        if budget is None and cap is not None:
            budget = cap - reserved_bytes()
        chunk = mesh_kernel_chunk(int(mask.sum()), budget)
        if not chunk:
            need = mesh_kernel_bytes(int(mask.sum()), MIN_MESH_CHUNK)
            raise InputError(
                f"`max_memory`={execution.max_memory!r} cannot hold FILM's neighbourhood on this surface "
                f"({need / 2**20:.1f} MiB for {int(mask.sum())} vertices); give at least "
                f"{cap_text(need + reserved_bytes())}, or use --noise ar1 .. ar16 (no spatial step)."
            )
        return FilmSpace(mask, None, brightness, mesh=mesh, chunk=chunk)
    grid = np.asarray(masker.mask).reshape(geometry.shape, order="F")
    voxel_mm = _voxel_mm(geometry)
    return FilmSpace(grid, voxel_mm, brightness)


def _voxel_mm(geometry) -> np.ndarray:
    """A volume's voxel sizes (mm) from its affine, as FILM's neighbourhood and its estimate take them."""
    return np.linalg.norm(np.asarray(geometry.affine)[:3, :3], axis=0)


def check_film_geometry(geometry, mesh=None) -> None:
    """FILM's spatial step needs neighbours: a volume's, or a surface's with its mesh; anything else is refused in
    one line."""
    if geometry is not None and geometry.kind == "surface":
        if mesh is None:
            raise InputError(
                "--noise film smooths the autocorrelation over neighbouring vertices: give the data's surface "
                "mesh (voxfit fit --mesh lh.midthickness.surf.gii; fit_images(mesh=...); voxfit bids takes none), "
                "or use --noise arma11, auto or ar1 .. ar16."
            )
        return
    if geometry is None or geometry.kind != "volume":
        kind = "data without geometry" if geometry is None else f"a {geometry.kind}"
        raise InputError(
            f"--noise film smooths the autocorrelation over neighbouring voxels of a volume or vertices of a "
            f"surface, but the data are {kind}; use --noise arma11, auto or ar1 .. ar16 (per voxel, no spatial step)."
        )


def film_autocorrelations(lagged, valid, space: FilmSpace | None) -> tuple[np.ndarray, dict]:
    """FILM's autocorrelations (V, M+1) from every voxel's OLS residual lagged products `lagged` (M+1, V, float64;
    those of voxels not `valid` unused), made in `lagged`'s memory (its values are lost): raw, smoothed within the
    mask by the SUSAN-like filter of `space` (None: no spatial step), Tukey-tapered; and FILM's settings for
    model.json. Shared by the in-memory and the streamed fits; at most :func:`film_stage_bytes` beside `lagged`."""
    info = {"model": "FSL FILM per voxel", "tukey_window": lagged.shape[0] - 1, "dof": "n - rank (FILM's)"}
    rho = raw_autocorrelations(lagged, in_place=True)
    if space is not None:
        kernel = space.kernel()
        bright = np.where(np.isfinite(space.brightness), space.brightness, 0.0)
        bt = susan_brightness_threshold(bright[valid])
        rho = smooth_autocorrelations(rho, kernel, bright, bt, valid, in_place=True)
        del kernel
        info.update(spatial_smoothing="SUSAN-like", sigma_mm=space.sigma_mm, brightness_threshold=bt)
        if space.mesh is not None:
            info["neighbours"] = f"along the surface mesh (at most {MESH_NEIGHBOURS} nearest per vertex)"
    else:
        info["spatial_smoothing"] = "none"
    # (each voxel's autocorrelations together, as the fit takes them: `lagged`'s transpose held them by lag)
    return np.ascontiguousarray(tukey_taper(rho, in_place=True)), info


def film_stage_bytes(n_voxels: int, order: int, geometry=None) -> int:
    """The most :func:`film_autocorrelations` holds beside the lagged products of `n_voxels` voxels (FILM's window
    `order`) of `geometry` (a volume's, or a surface's): the lags copied as they are smoothed, or the
    autocorrelations copied in each voxel's order; the neighbourhood (``voxfit.core.film.volume_kernel_bytes``, or a
    surface's (K, V) arrays and a search chunk); the brightness maps and a chunk's sums. (tracemalloc's peaks were
    0.66-0.79 of it from 500 to 270,000 voxels.) Without `geometry`, all but the neighbourhood."""
    if geometry is None:
        kernel = 0
    elif geometry.kind == "surface":  # (its search chunk fitted to the room left: film_space's `budget`)
        kernel = mesh_kernel_bytes(n_voxels, min(n_voxels, MIN_MESH_CHUNK))
    else:
        kernel = volume_kernel_bytes(geometry.shape, _voxel_mm(geometry), n_voxels)
    return 8 * n_voxels * (order + 1 + 4) + kernel + 8 * min(n_voxels, SMOOTH_CHUNK) * (3 * order + 8)


def fit_arma11(X, Y, contrasts: dict, *, names=None, execution: Execution | None = None) -> NoiseModelFit:
    """ARMA(1,1) per voxel by REML over 3dREMLfit's grid, refined (``voxfit.core.arma``); t and F on
    Satterthwaite's degrees of freedom for the (a, b) estimate (3dREMLfit uses n - rank)."""
    execution = execution or Execution()
    design, Y, n_jobs, weights = _prepare(X, Y, contrasts, names, execution)
    n, (V, pc) = design.n_scans, (Y.shape[1], design.X.shape[1])
    if n <= design.rank + 3:
        raise InputError(f"arma11 needs more than {design.rank + 3} scans; the data have {n}.")
    step = min(_step(n, pc, design.rank * 2, execution, n_jobs), ARMA_BLOCK)
    maps = ARMaps(pc, 2, weights, V)
    valid = np.zeros(V, dtype=bool)
    terms = arma_terms(design, list(weights.values()))

    def task(start: int) -> None:
        ok, Yb = finite_columns(Y[:, start : start + step])
        valid[start : start + ok.size] = ok
        if ok.any():
            maps.place(start + np.flatnonzero(ok), fit_arma_block(design, Yb, list(weights.values()), terms=terms))

    _run_blocks(V, step, n_jobs, task)
    fit, stats = maps.result(design, valid, n_jobs)
    info = {
        "model": "ARMA(1,1) per voxel by REML (AFNI 3dREMLfit's grid, refined)",
        "grid_a": [float(ARMA_GRID[:, 0].min()), float(ARMA_GRID[:, 0].max())],
        "grid_b": [float(ARMA_GRID[:, 1].min()), float(ARMA_GRID[:, 1].max())],
        "grid_points": int(len(ARMA_GRID)),
        "dof": "Satterthwaite's, for the REML estimate of (a, b) (3dREMLfit: n - rank)",
    }
    return NoiseModelFit(fit, stats, maps.phi, ["a", "b"], None, info)


def fit_auto_ar(
    X, Y, contrasts: dict, *, names=None, max_order: int = AUTO_MAX_ORDER, execution: Execution | None = None
) -> NoiseModelFit:
    """AR(p) per voxel with p in 0..`max_order` chosen by BIC on the OLS residuals' Yule-Walker fits
    (``voxfit.core.film.select_ar_order``), each voxel then fitted as ``--noise arp`` fits it (bias-corrected
    estimate, exact whitening, Satterthwaite degrees of freedom for the AR estimate; p = 0: OLS, n - rank).

    Each order's variances count its p coefficients (n - rank - p), but not the choice: the voxels of white noise
    that BIC gives an order of 1 or more are those whose residuals looked autocorrelated, and their whitened RSS is
    short by far more than p (7 sigma^2 for p = 1 over 200 scans, two-sided rate 0.070 at 0.05 among them; 0.0489
    over all the voxels, most of which keep OLS)."""
    execution = execution or Execution()
    design, Y, n_jobs, weights = _prepare(X, Y, contrasts, names, execution)
    n, (V, pc) = design.n_scans, (Y.shape[1], design.X.shape[1])
    top = max_order
    while top > 0 and n <= 2 * top + design.rank:
        top -= 1
    check_ar_terms(design, range(1, top + 1), execution.max_memory)  # (every order's terms held at once)
    blocks = {p: ARBlock(design, p) for p in range(1, top + 1)}
    step = _step(n, pc, top, execution, n_jobs)
    maps = ARMaps(pc, max(top, 1), weights, V)
    orders = np.full(V, -1, dtype=np.int64)
    valid = np.zeros(V, dtype=bool)
    Q, nu = design.basis, design.n_scans - design.rank
    wqs = [w @ design.basis_pinv for w in weights.values()]

    def task(start: int) -> None:
        ok, Yb = finite_columns(Y[:, start : start + step])
        valid[start : start + ok.size] = ok
        if not ok.any():
            return
        at = start + np.flatnonzero(ok)
        Yf = np.asarray(Yb, dtype=np.float64)
        centred = Yf - Yf.mean(axis=0) if design.has_intercept else Yf
        shifted = centred if design.exact_intercept else Yf  # (the residuals unchanged)
        chosen = select_ar_order(residual_lagged_products(Q, shifted, top), nu, top) if top else np.zeros(at.size, int)
        orders[at] = chosen
        white = np.flatnonzero(chosen == 0)
        if white.size:
            coords = Q.T @ Yf[:, white]
            resid = Yf[:, white] - Q @ coords
            tss = np.einsum("tv,tv->v", centred[:, white], centred[:, white])
            rss = np.einsum("tv,tv->v", resid, resid)
            ysq = np.einsum("tv,tv->v", Yf[:, white], Yf[:, white])
            rss[exact_fits(rss, ysq, n)] = 0.0  # (a constant voxel: no residual variance, no statistic)
            tss[exact_fits(tss, ysq, n)] = 0.0
            betas = design.basis_pinv @ coords
            _place_ols(maps, at[white], betas, rss, tss, weights, wqs, nu)
        for p, block in blocks.items():
            idx = np.flatnonzero(chosen == p)
            if idx.size:
                res = fit_ar_block(block, Yf[:, idx], list(weights.values()))
                maps.place(at[idx], _padded(res, maps.phi.shape[0]))

    _run_blocks(V, step, n_jobs, task)
    fit, stats = maps.result(design, valid, n_jobs)
    info = {
        "model": "AR(p) per voxel, p chosen by BIC",
        "max_order": top,
        "criterion": "BIC on the Yule-Walker fits to the OLS residuals' autocorrelations",
        "dof": "Satterthwaite's for the AR estimate of the chosen order (n - rank for p = 0)",
    }
    return NoiseModelFit(fit, stats, maps.phi, [f"ar{k + 1}" for k in range(maps.phi.shape[0])], orders, info)


def _padded(res, order: int):
    """An ARBlockFit whose phi (v, p) is padded with zeros to `order` columns."""
    phi = np.zeros((res.phi.shape[0], order))
    phi[:, : res.phi.shape[1]] = res.phi
    return replace(res, phi=phi)


@dataclass(frozen=True, eq=False)
class _OLSBlock:
    """OLS results in the fields :meth:`ARMaps.place` reads."""

    betas: np.ndarray
    rss: np.ndarray
    phi: np.ndarray
    contrasts: list
    ols_rss: np.ndarray
    tss: np.ndarray


def _place_ols(maps: ARMaps, at, betas, rss, tss, weights, wqs, nu) -> None:
    """OLS results of the voxels `at` placed in `maps` (AR coefficients 0, ``n - rank`` degrees of freedom)."""
    v = at.size
    dof = float(nu)
    contrasts = []
    for w, wq in zip(weights.values(), wqs):
        cov = np.broadcast_to(wq @ wq.T, (v, wq.shape[0], wq.shape[0]))
        contrasts.append((w @ betas, cov, np.full(v, dof)))
    maps.place(at, _OLSBlock(betas, rss, np.zeros((v, maps.phi.shape[0])), contrasts, rss, tss))

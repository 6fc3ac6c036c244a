"""The design side of the model: factorised once, in float64, with a rank-revealing method.

``factorize(X)`` scales every column to unit length, takes a column-pivoted QR decomposition of the scaled
design and decides its rank from the singular values of the (p x p) triangular factor. Scaling first is what
keeps ill-conditioned designs accurate (the NIST Filip polynomial keeps 7 correct digits instead of none
with a plain ``pinv``) and makes the rank decision independent of the units of each regressor.

For a rank-deficient design the returned operator is still the Moore-Penrose pseudo-inverse (the minimum
norm solution, as ``numpy.linalg.pinv`` and SPM give), built from the basic QR solution by projecting out
the null space, which is itself computed from the scaled factorisation.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sl
from numpy.typing import NDArray

from .._array import check_array_like
from .._checks import repeated
from .._memory import check_memory
from .._threads import blas_single_threaded, interruptible
from ..exceptions import DataTypeError, InputError, RankDeficiencyWarning

__all__ = ["DesignFactor", "factorize", "check_factor_memory", "as_design_matrix", "orthonormal_basis"]

_NULL_ENTRY_RTOL = 1e-8  # entries of a null vector below this (relative) are not "involved"
# the constant's distance from the column space, per row (|(I - H) 1| / sqrt(n)): up to INTERCEPT_RTOL the design
# has an intercept (R^2 centred); up to EXACT_INTERCEPT_RTOL it is there to rounding (the fits' shifts drop its
# terms). Designs whose constant is exact come out at 1e-16 to 7e-14 (SPM-like, one-hot, polynomial; 100 to 5,000
# scans); beyond the bound the terms are kept, exactly, at one more row in the fit's product.
INTERCEPT_RTOL = 1e-8
EXACT_INTERCEPT_RTOL = 1e-12
# Columns are scaled to unit length before the factorisation, but the pseudo-inverse and the covariance of the
# betas are in the units of the columns: a norm s makes them ~1/s and ~1/s^2. Norms within 1e+-100 keep
# those (and a contrast's variance) representable in float64 for any well-posed design; beyond, the column
# is refused with the factor that brings it back, rather than fitted into inf, 0 or NaN.
_MAX_COLUMN_NORM = 1e100
_FACTOR_CHECKED = 16 << 20  # bytes of a design's factors above which they are checked against the memory there is
_LARGE_FLOPS = 1e8  # n p^2 of a design factorised in a helper thread (see factorize)


@dataclass(frozen=True, eq=False)
class DesignFactor:
    """A design matrix and everything the voxel side needs from it, computed once.

    Attributes
    ----------
    X : (n, p) float64 array
        The design, one row per scan, one column per regressor.
    names : tuple of str
        Column names (``x0, x1, ...`` when none were given).
    rank : int
        Numerical rank of X, decided on the column-scaled design.
    pinv : (p, n) float64 array
        Moore-Penrose pseudo-inverse of X: ``betas = pinv @ Y``.
    cov_unscaled : (p, p) float64 array
        ``pinv @ pinv.T = (X'X)^+``; the covariance of the betas is this times sigma^2.
    null_space : (p, p - rank) float64 array
        Orthonormal basis of the null space of the column-scaled design (empty when X has full rank).
    col_scale : (p,) float64 array
        The column norms used for scaling (1 for all-zero columns).
    basis : (n, rank) float64 array
        Orthonormal basis Q of the column space of X (from the QR factorisation).
    basis_pinv : (p, rank) float64 array
        ``pinv @ basis``: betas from the coordinates ``basis.T @ y`` of the fitted values.
    has_intercept : bool
        Whether the constant vector lies in the column space of X, to 1e-8 per row; R^2 and the total sum of
        squares are centred when it does.
    ones_residual : (n,) float64 array
        ``(I - H) 1``: zero when the constant is in the column space to rounding (:attr:`exact_intercept`).
    condition : float
        Condition number of the column-scaled design restricted to its rank.
    """

    X: NDArray[np.float64]
    names: tuple[str, ...]
    rank: int
    pinv: NDArray[np.float64]
    cov_unscaled: NDArray[np.float64]
    null_space: NDArray[np.float64]
    col_scale: NDArray[np.float64]
    basis: NDArray[np.float64]
    basis_pinv: NDArray[np.float64]
    has_intercept: bool
    ones_residual: NDArray[np.float64]
    condition: float

    @property
    def n_scans(self) -> int:
        return self.X.shape[0]

    @property
    def n_columns(self) -> int:
        return self.X.shape[1]

    @functools.cached_property
    def ones_coef(self) -> NDArray[np.float64]:
        """``pinv @ 1``, with two steps of iterative refinement, ``c += pinv (1 - X c)``: the betas of a level added
        to every scan, which the fits multiply by each voxel's shift (its offset in ``voxfit.core.ols``, the shift
        of summed data). Unrefined, its rounding (eps times the design's condition) times a level of 2.5e8 moved
        a beta of a design of condition 2e9 by 30 of its standard errors."""
        ones = np.ones(self.n_scans)
        coef = self.pinv @ ones
        for _ in range(2):
            coef = coef + self.pinv @ (ones - self.X @ coef)
        coef.setflags(write=False)
        return coef

    def add_level(self, betas: NDArray, level: NDArray) -> None:
        """``betas += outer(ones_coef, level)`` in place: the betas (p, V) of data whose voxels were shifted by
        `level` (V,), given back that level, a row at a time (the outer product, a (p, V) temporary, took 33 ms of
        a 230k-voxel, 15-column OLS fit, its pages faulted in after the read)."""
        for row, coef in zip(betas, self.ones_coef, strict=True):
            row += coef * level

    @property
    def exact_intercept(self) -> bool:
        """Whether the constant is in the column space to rounding (``ones_residual`` zero): only then may a fit
        shift each voxel's data by a level (its mean, its first scan) and leave the shift's terms out of the sums of
        squares. A design whose constant is only near its span (``has_intercept`` but not this: a column within 1e-9
        of 1, proportions written with 8 digits) keeps those terms, which are exact: left out, they put the residual
        variance of data at 1e6 +- 1e-3 98% short."""
        return self.has_intercept and not self.ones_residual.any()

    @property
    def dof(self) -> int:
        """Residual degrees of freedom, ``n - rank``."""
        return self.n_scans - self.rank

    def dependencies(self) -> list[str]:
        """The linear dependencies among columns, one readable equation per null-space direction."""
        relations = []
        for vec in self.null_space.T:
            coefs = vec / self.col_scale  # back to the original units: X @ coefs = 0
            coefs = coefs / coefs[np.argmax(np.abs(vec))]
            involved = np.abs(vec) > _NULL_ENTRY_RTOL * np.abs(vec).max()
            relations.append(_format_relation(coefs[involved], [self.names[i] for i in np.flatnonzero(involved)]))
        return relations

    def involved_columns(self, directions: NDArray | None = None) -> list[str]:
        """Names of the columns that take part in the design's linear dependencies."""
        null = self.null_space if directions is None else directions
        if null.size == 0:
            return []
        weight = np.abs(null).max(axis=1)
        return [name for name, w in zip(self.names, weight) if w > _NULL_ENTRY_RTOL * weight.max()]


def brief(items: list[str], at_most: int = 8, sep: str = ", ") -> str:
    """`items` joined, the first `at_most` of them and a count of the others (a design of 48 columns for 40 scans
    made one message of 5 KB)."""
    shown = sep.join(items[:at_most])
    return shown if len(items) <= at_most else f"{shown}{sep}and {len(items) - at_most} more"


def _format_relation(coefs: NDArray, names: list[str]) -> str:
    terms = []
    for c, name in zip(coefs, names):
        mag = abs(c)
        text = name if np.isclose(mag, 1.0, rtol=1e-6) else f"{mag:.4g}*{name}"
        terms.append(("- " if c < 0 else "+ ") + text)
    return " ".join(terms).removeprefix("+ ") + " = 0"


def as_design_matrix(X, names=None) -> tuple[NDArray[np.float64], tuple[str, ...]]:
    """Check a design and return it as a float64 array with its column names.

    `X` may be a 2-D array or a pandas DataFrame (column names are taken from it); `names` overrides them.
    """
    check_array_like(X, "X", "a 2-D (n_scans, n_regressors) array or a pandas DataFrame")
    columns = getattr(X, "columns", None)
    if columns is not None and hasattr(X, "dtypes"):  # a DataFrame, without importing pandas
        bad = [str(c) for c, dt in zip(columns, X.dtypes) if getattr(dt, "kind", "O") not in "biuf"]
        if bad:
            raise DataTypeError(f"`X` must be numeric, but design column(s) {', '.join(map(repr, bad))} are not.")
        if names is None:
            names = [str(c) for c in columns]
        X = X.to_numpy(dtype=np.float64)
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataTypeError(f"`X` must be a numeric array; got dtype {X.dtype}.")
    if X.ndim != 2:
        hint = " For a single regressor pass X[:, None]." if X.ndim == 1 else ""
        raise InputError(f"`X` must be 2-D (n_scans, n_regressors); got shape {X.shape}.{hint}")
    n, p = X.shape
    if n == 0 or p == 0:
        raise InputError(f"`X` must have at least one scan and one column; got shape {X.shape}.")
    X = np.array(X, dtype=np.float64, order="C")  # small: always our own copy
    bad_cols = np.flatnonzero(~np.isfinite(X).all(axis=0))
    if names is not None and (isinstance(names, str) or not hasattr(names, "__iter__")):
        raise InputError(f"`names` must be a sequence of {p} column names; got {names!r}.")
    names = tuple(f"x{j}" for j in range(p)) if names is None else tuple(str(s) for s in names)
    if len(names) != p:
        raise InputError(f"`names` has {len(names)} entries but `X` has {p} columns.")
    if len(set(names)) != p:
        dup = repeated(names)
        raise InputError(f"design column names must be unique; {', '.join(map(repr, dup))} appear more than once.")
    if bad_cols.size:
        raise InputError(
            f"`X` contains NaN or infinite values in column(s) {', '.join(repr(names[j]) for j in bad_cols)}; "
            "a design must be finite."
        )
    X.setflags(write=False)
    return X, names


def check_factor_memory(n: int, p: int, max_memory=None) -> None:
    """Refuse a design of `p` columns x `n` scans whose factorisation cannot fit `max_memory` (None: the memory
    there is): its p x p matrices (null space, covariance, their factors and products) and n x p ones, four while
    it is factorised and four more that the fit holds beside them (the design as given and as a matrix, the
    factor's basis and pseudo-inverse: a BIDS run of 32,767 scans and 1,026 columns peaked at 2.9 GB under
    --max-memory 2G, with the check on the first four passed). A design of 100,000 columns, from a confounds file
    selected by a pattern, took more memory than the machine had. Designs built column by column (a BIDS run's)
    call this before their columns are made."""
    need = 8.0 * p * (6 * p + 8 * n)
    if need > _FACTOR_CHECKED:  # (a design of ordinary width costs no more than a cap's other parts' rounding)
        fix = "Give fewer columns" + (" (a design estimates at most one independent column per scan)" if p > n else "")
        fix += ", or a larger --max-memory (`max_memory`)." if max_memory is not None else "."
        check_memory(need, f"factorising a design of {p:,} columns x {n:,} scans", max_memory, fix)


def factorize(X, names=None, *, rtol: float | None = None, warn: bool = True, max_memory=None) -> DesignFactor:
    """Factorise a design once: rank, pseudo-inverse, null space and what the voxel side needs.

    Parameters
    ----------
    X : (n, p) array_like or pandas.DataFrame
        The design matrix.
    names : sequence of str, optional
        Column names; taken from a DataFrame's columns, else ``x0, x1, ...``.
    rtol : float, optional
        Relative tolerance on the singular values of the column-scaled design below which a direction
        counts as null. Default ``max(n, p) * eps`` (numpy's ``matrix_rank`` rule, applied after scaling).
    warn : bool
        Emit a :class:`~voxfit.exceptions.RankDeficiencyWarning` naming the dependent columns.
    max_memory : str or int, optional
        The cap its p x p matrices must fit (as ``voxfit.fit``'s); by default the memory available. A design of
        many more columns than scans is refused before they are made.
    """
    X, names = as_design_matrix(X, names)
    n, p = X.shape
    eps = np.finfo(np.float64).eps
    rtol = max(n, p) * eps if rtol is None else float(rtol)

    scale = _column_norms(X, names)
    check_factor_memory(n, p, max_memory)
    if n * p * p >= _LARGE_FLOPS:  # LAPACK calls of seconds: in a helper thread, they let Ctrl-C and SIGTERM through
        Qr, sv, rank, pinv, cov_unscaled, null_scaled, basis_pinv = interruptible(_factor, X, scale, rtol)
    else:  # BLAS threads gain nothing on a small design, and they spin for ~0.1 s after each call, taking the
        with blas_single_threaded():  # cores from the voxel pass that follows (76 -> 50 ms, 300 x 200,000)
            Qr, sv, rank, pinv, cov_unscaled, null_scaled, basis_pinv = _factor(X, scale, rtol)
    ones_residual = np.ones(n) - Qr @ Qr.sum(axis=0)
    distance = np.linalg.norm(ones_residual) / np.sqrt(n)
    has_intercept = bool(distance <= INTERCEPT_RTOL)
    if distance <= EXACT_INTERCEPT_RTOL:
        ones_residual = np.zeros(n)

    factor = DesignFactor(
        X=X,
        names=names,
        rank=rank,
        pinv=_frozen(pinv),
        cov_unscaled=_frozen(cov_unscaled),
        null_space=_frozen(null_scaled),
        col_scale=_frozen(scale),
        basis=_frozen(Qr),
        basis_pinv=_frozen(basis_pinv),
        has_intercept=has_intercept,
        ones_residual=_frozen(ones_residual),
        condition=float(sv[0] / sv[rank - 1]),
    )
    if warn and rank < p:
        warnings.warn(
            f"The design is rank deficient (rank {rank} for {p} columns{f', {n} scans' if p > n else ''}): columns "
            f"{brief(factor.involved_columns())} are linearly dependent ({brief(factor.dependencies(), 2, '; ')}); "
            "only contrasts in the row space of the design are estimable.",
            RankDeficiencyWarning,
            stacklevel=3,
        )
    return factor


def _factor(X: NDArray, scale: NDArray, rtol: float):
    """The numbers of :func:`factorize`: basis, singular values, rank, pseudo-inverse, covariance, null space."""
    n, p = X.shape
    Q, R, piv = sl.qr(X / scale, mode="economic", pivoting=True)
    sv = np.linalg.svd(R, compute_uv=False)
    if sv[0] == 0:
        raise InputError("`X` has no non-zero column; a design needs at least one regressor.")
    rank = int(np.sum(sv > rtol * sv[0]))

    Qr, R11 = Q[:, :rank], R[:rank, :rank]
    basic = np.zeros((p, n))
    basic[piv[:rank]] = sl.solve_triangular(R11, Qr.T) / scale[piv[:rank], None]
    if rank < p:
        # null space of the scaled design in pivoted coordinates: [-R11^-1 R12; I]
        null_piv = np.vstack([-sl.solve_triangular(R11, R[:rank, rank:]), np.eye(p - rank)])
        null_scaled = np.empty_like(null_piv)
        null_scaled[piv] = null_piv
        null_scaled = np.linalg.qr(null_scaled)[0]
        null_orig = np.linalg.qr(null_scaled / scale[:, None])[0]  # null space of X itself
        pinv = basic - null_orig @ (null_orig.T @ basic)  # minimum-norm solution
    else:
        null_scaled = np.zeros((p, 0))
        pinv = basic

    cov_unscaled = pinv @ pinv.T
    parts = {"pseudo-inverse": pinv, "covariance": cov_unscaled, "null space": null_scaled, "basis": Qr}
    bad = [what for what, a in parts.items() if not np.isfinite(a).all()]
    if bad or not np.isfinite(sv).all():  # estimability and rank are never decided from NaN or inf
        raise InputError(
            f"the design cannot be factorised in float64: its {', '.join(bad) or 'singular values'} came out "
            "non-finite; rescale its columns to ordinary sizes (e.g. standardise them)."
        )
    return Qr, sv, rank, pinv, cov_unscaled, null_scaled, pinv @ Qr


def _column_norms(X: NDArray, names: tuple[str, ...]) -> NDArray[np.float64]:
    """Euclidean norm of each column (1 for all-zero columns), computed without overflowing the squares;
    refuses columns whose norm is beyond ``1e+-100`` (see ``_MAX_COLUMN_NORM``), naming the rescaling."""
    big = np.abs(X).max(axis=0)
    unit = np.where(big > 0, big, 1.0)
    scale = unit * np.linalg.norm(X / unit, axis=0)  # a column of 1e308 has a finite norm up to overflow
    zero = big == 0
    out = ~zero & ~((scale >= 1 / _MAX_COLUMN_NORM) & (scale <= _MAX_COLUMN_NORM))
    if out.any():
        j = int(np.flatnonzero(out)[0])
        factor = 10.0 ** -np.round(np.log10(big[j]))
        raise InputError(
            f"design column {names[j]!r} has values of size {big[j]:.3g} (norm {scale[j]:.3g}); columns must have "
            f"norms between {1 / _MAX_COLUMN_NORM:g} and {_MAX_COLUMN_NORM:g} for the fit to be computed in float64 "
            f"(their squares and inverses must be representable); multiply it by {factor:.0e} or standardise it."
            + (f" ({int(out.sum()) - 1} more column(s) likewise.)" if out.sum() > 1 else "")
        )
    scale[zero] = 1.0
    return scale


def _frozen(a: NDArray) -> NDArray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def orthonormal_basis(A, scale: float | None = None) -> NDArray[np.float64]:
    """An orthonormal basis (n, rank) of the column space of A (n, k), by SVD; (n, 0) for no or zero columns. The
    rank counts singular values above ``max(n, k) eps`` times `scale`, by default A's largest: give the scale A
    came from where A is a difference that can cancel to rounding (a design less the part of it a contrast spans),
    whose noise would otherwise be taken for columns."""
    A = np.asarray(A, dtype=np.float64)
    if A.shape[1] == 0:
        return np.zeros((A.shape[0], 0))
    u, s, _ = np.linalg.svd(A, full_matrices=False)
    return u[:, s > max(A.shape) * np.finfo(float).eps * (s[0] if scale is None else max(scale, s[0]))]

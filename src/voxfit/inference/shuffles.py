"""Sign-flips and permutations of the rows of a model, with exchangeability blocks, enumerated or drawn.

Conventions (FSL randomise, PALM): under exchangeable errors (EE) rows are permuted, within each block
(``blocks``) or, with ``whole_blocks``, blocks of equal size are permuted as units; under independent and
symmetric errors (ISE) each row's sign is flipped, or each block's as one with ``whole_blocks``. Only
distinct rearrangements are counted: permuting rows whose design rows are equal changes nothing, so a
two-sample design of 5 + 5 subjects has C(10, 5) = 252 permutations, not 10!. When the number asked for
reaches that count, every rearrangement is enumerated once (the test is then exact); otherwise the identity
comes first and the rest are drawn at random: sign-flips without repetition when their count is small
enough to index, permutations independently (a repeat is possible, as in randomise).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._checks import check_flag, check_scalar
from ..exceptions import InputError

__all__ = ["Shuffles", "make_shuffles", "count_shuffles"]

_INDEXABLE = 1 << 24  # below this many rearrangements, random draws are made without repetition


@dataclass(frozen=True, eq=False)
class Shuffles:
    """Rearrangements of n rows: ``kind`` 'flip' (``signs`` (N, n) of +-1) or 'permute' (``order`` (N, n):
    row i of the shuffled data is row ``order[b, i]`` of the original). Row 0 is always the identity."""

    kind: str
    signs: NDArray[np.int8] | None
    order: NDArray[np.intp] | None
    exhaustive: bool
    available: int  # how many distinct rearrangements exist (may be huge)

    @property
    def n(self) -> int:
        return (self.signs if self.kind == "flip" else self.order).shape[0]


def _block_labels(blocks, n: int) -> NDArray[np.intp]:
    if blocks is None:
        return np.zeros(n, dtype=np.intp)
    b = np.asarray(blocks)
    if b.shape != (n,):
        raise InputError(f"`blocks` must give one exchangeability block per row ({n}); got shape {b.shape}.")
    try:
        return np.unique(b, return_inverse=True)[1].astype(np.intp)
    except TypeError:  # (labels that do not sort: None beside numbers)
        raise InputError("`blocks` must label every row with a number or a name; some labels are missing.") from None


def _generator(seed) -> np.random.Generator:
    """numpy's generator of `seed` (None, a non-negative integer or a Generator), refused in words otherwise."""
    if seed is None or isinstance(seed, (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"`seed` must be a non-negative integer (or a numpy Generator); got {seed!r}.")
    return np.random.default_rng(seed)


def _row_classes(design: NDArray) -> NDArray[np.intp]:
    """Rows with equal design values share a class (permuting them changes nothing)."""
    return np.unique(np.round(np.asarray(design, dtype=float), 12), axis=0, return_inverse=True)[1].reshape(-1)


def _block_patterns(classes: NDArray, labels: NDArray) -> NDArray[np.intp]:
    """One code per block: blocks whose rows have the same design rows in the same order share it."""
    seen: dict[tuple, int] = {}
    return np.array([seen.setdefault(tuple(classes[labels == b]), len(seen)) for b in range(int(labels.max()) + 1)])


def _multinomial(labels: NDArray) -> int:
    counts = np.unique(labels, return_counts=True)[1]
    out = math.factorial(int(labels.size))
    for c in counts:
        out //= math.factorial(int(c))
    return out


def count_shuffles(kind: str, design: NDArray, blocks=None, whole_blocks: bool = False) -> int:
    """Number of distinct rearrangements of the rows of `design` (n, p) under `kind` ('flip' or 'permute')."""
    n = design.shape[0]
    labels = _block_labels(blocks, n)
    n_blocks = int(labels.max()) + 1
    if kind == "flip":
        return 2 ** (n_blocks if whole_blocks else n)
    classes = _row_classes(design)
    if whole_blocks:
        return _multinomial(_block_patterns(classes, labels))
    return math.prod(_multinomial(classes[labels == b]) for b in range(n_blocks))


def _multiset_permutations(seq: list[int]):
    """Each distinct ordering of `seq` once, in lexicographic order (the next-permutation algorithm)."""
    a = sorted(seq)
    while True:
        yield list(a)
        i = len(a) - 2
        while i >= 0 and a[i] >= a[i + 1]:
            i -= 1
        if i < 0:
            return
        j = len(a) - 1
        while a[j] <= a[i]:
            j -= 1
        a[i], a[j] = a[j], a[i]
        a[i + 1 :] = reversed(a[i + 1 :])


def _orders_from_labelling(classes: NDArray, positions: NDArray, labelling: list[int]) -> NDArray[np.intp]:
    """The order in which row ``positions[k]`` moves to a position of class ``labelling[k]`` (the positions of
    one class taking their new rows in increasing order): one order per distinct relabelling of rows."""
    target = classes[positions]
    out = np.empty(len(positions), dtype=np.intp)
    labelling = np.asarray(labelling)
    for c in np.unique(target):
        out[np.flatnonzero(target == c)] = positions[labelling == c]
    return out


def _enumerate_permutations(design, labels, whole_blocks) -> NDArray[np.intp]:
    n = design.shape[0]
    classes = _row_classes(design)
    n_blocks = int(labels.max()) + 1
    if whole_blocks:
        members = [np.flatnonzero(labels == b) for b in range(n_blocks)]
        patterns = _block_patterns(classes, labels)
        rows = []
        for labelling in _multiset_permutations(list(patterns)):  # labelling[k]: the pattern data block k takes
            blocks_order = _orders_from_labelling(patterns, np.arange(n_blocks), labelling)
            order = np.empty(n, dtype=np.intp)
            for slot, src in enumerate(blocks_order):
                order[members[slot]] = members[src]
            rows.append(order)
        return np.array(rows)
    per_block = []
    for b in range(n_blocks):
        pos = np.flatnonzero(labels == b)
        per_block.append(
            [(pos, _orders_from_labelling(classes, pos, lab)) for lab in _multiset_permutations(list(classes[pos]))]
        )
    rows = []
    for combo in itertools.product(*per_block):
        order = np.arange(n)
        for pos, sub in combo:
            order[pos] = sub
        rows.append(order)
    return np.array(rows)


def _identity_first(rows: NDArray, identity: NDArray) -> NDArray:
    at = np.flatnonzero((rows == identity).all(axis=1))
    if at.size and at[0] != 0:
        rows[[0, at[0]]] = rows[[at[0], 0]]
    return rows


MIN_SHUFFLES_05 = 20  # rearrangements (identity included) whose smallest p, 1/20, is not below 0.05


def make_shuffles(
    kind: str, design: NDArray, n_shuffles: int, *, blocks=None, whole_blocks: bool = False, seed=None
) -> Shuffles:
    """`n_shuffles` rearrangements (the identity first), or all of them when there are no more than that.

    Parameters
    ----------
    kind : {'flip', 'permute'}
        Sign-flips (independent, symmetric errors) or permutations (exchangeable errors).
    design : (n, p) array
        The model whose rows are rearranged (equal rows make permutations equivalent).
    blocks : (n,) labels, optional
        Exchangeability blocks (FSL's .grp): rows are permuted within their block, or, with
        `whole_blocks`, blocks of equal size are permuted (or sign-flipped) as units.
    seed : int or numpy Generator, optional
        For reproducible random draws.
    """
    design = np.asarray(design, dtype=float)
    n = design.shape[0]
    if kind not in ("flip", "permute"):
        raise InputError(f"`kind` must be 'flip' or 'permute'; got {kind!r}.")
    check_scalar(n_shuffles, "the number of permutations", min_val=1)
    check_flag(whole_blocks, "`whole_blocks`")
    labels = _block_labels(blocks, n)
    n_blocks = int(labels.max()) + 1
    if whole_blocks:
        sizes = np.bincount(labels)
        if kind == "permute" and len(set(sizes.tolist())) > 1:
            names = np.unique(np.asarray(blocks))
            common = int(np.bincount(sizes).argmax())  # the size most blocks have; the others are named
            odd = [f"block {names[b]} has {sizes[b]}" for b in np.flatnonzero(sizes != common)]
            shown = ", ".join(odd[:4]) + (f" and {len(odd) - 4} more differ" if len(odd) > 4 else "")
            raise InputError(
                f"whole-block permutation needs blocks of equal size: {int(np.sum(sizes == common))} of the "
                f"{sizes.size} blocks have {common} row(s), but {shown}; give blocks of one size, or drop whole "
                "blocks (--permute-blocks) to permute rows within their blocks."
            )
    available = count_shuffles(kind, design, blocks, whole_blocks)
    rng = _generator(seed)
    exhaustive = n_shuffles >= available
    if min(n_shuffles, available) <= MIN_SHUFFLES_05:  # (the FWE maps would be 1 or near it everywhere)
        count = min(n_shuffles, available)
        why = f"the design allows only {available}" if exhaustive else "give --permutations 5000 or more"
        blocked = not whole_blocks and count_shuffles(kind, design, None, False) > available  # (the blocks' doing)
        if exhaustive and n_blocks > 1 and blocked:  # (FEAT's design.grp given as the blocks: each block one group)
            why += (
                f" within its {n_blocks} exchangeability blocks (--grp), each row kept in its block: check that the "
                "file is randomise's -e blocks, not FEAT's design.grp of variance groups (--variance-groups)"
            )
        warnings.warn(
            f"{count} rearrangements (the data as they are among them): the smallest p they can give is "
            f"1/{count} = {1 / count:.3g}, so no element can reach p < 0.05; {why}.",
            UserWarning,
            stacklevel=2,
        )
    units = n_blocks if (whole_blocks and kind == "flip") else n
    if kind == "flip":
        if exhaustive or available <= _INDEXABLE:
            codes = (
                np.arange(available)
                if exhaustive
                else np.concatenate([[0], 1 + rng.choice(available - 1, n_shuffles - 1, replace=False)])
            )
            bits = ((codes[:, None] >> np.arange(units)[None, :]) & 1).astype(np.int8)
        else:
            bits = rng.integers(0, 2, size=(n_shuffles, units), dtype=np.int8)
            bits[0] = 0
        signs = (1 - 2 * bits).astype(np.int8)
        if units != n:
            signs = signs[:, labels]
        return Shuffles("flip", signs, None, exhaustive, available)
    if exhaustive:
        order = _identity_first(_enumerate_permutations(design, labels, whole_blocks), np.arange(n))
        return Shuffles("permute", None, order, True, available)
    order = np.empty((n_shuffles, n), dtype=np.intp)
    order[0] = np.arange(n)
    members = [np.flatnonzero(labels == b) for b in range(n_blocks)]
    for k in range(1, n_shuffles):
        o = np.arange(n)
        if whole_blocks:
            for slot, src in enumerate(rng.permutation(n_blocks)):
                o[members[slot]] = members[src]
        else:
            for m in members:
                o[m] = rng.permutation(m)
        order[k] = o
    return Shuffles("permute", None, order, False, available)

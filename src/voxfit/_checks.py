"""One check of a scalar argument, with one message (scikit-learn's ``check_scalar`` is the pattern): its type,
its range, and ``<name> must be <what is accepted>; got <value>.`` when it is neither; and of a flag (True or
False)."""

from __future__ import annotations

import math
import numbers
from collections import Counter

from .exceptions import InputError

__all__ = ["MAX_THREADS", "check_flag", "check_n_jobs", "check_scalar", "is_number", "repeated"]

_BOUNDARIES = {"both": (True, True), "left": (True, False), "right": (False, True), "neither": (False, False)}


def check_scalar(
    value,
    name: str,
    target_type: type = numbers.Integral,
    *,
    min_val: float | None = None,
    max_val: float | None = None,
    include_boundaries: str = "both",
    description: str | None = None,
):
    """`value`, when it is a finite number of `target_type` (``numbers.Integral`` or ``numbers.Real``: numpy
    scalars included, booleans never) between `min_val` and `max_val` (`include_boundaries`: which of them
    are allowed, ``"both"``, ``"left"``, ``"right"`` or ``"neither"``); otherwise an :class:`InputError`
    ``"<name> must be <description>; got <value!r>."``.

    `name` is the parameter as the message names it (``"`n_jobs`"``, ``"the number of permutations"``);
    `description` says what is accepted, by default from the type and the bounds ("a positive integer",
    "a number >= 0 and < 1").
    """
    low_in, high_in = _BOUNDARIES[include_boundaries]
    ok = isinstance(value, target_type) and not isinstance(value, bool)
    ok = ok and (isinstance(value, numbers.Integral) or math.isfinite(value))  # (integers: any size)
    ok = ok and (min_val is None or value > min_val or (low_in and value == min_val))
    ok = ok and (max_val is None or value < max_val or (high_in and value == max_val))
    if not ok:
        what = description or _describe(target_type, min_val, max_val, low_in, high_in)
        raise InputError(f"{name} must be {what}; got {value!r}.")
    return value


def check_cluster_threshold(value) -> None:
    """A cluster-forming threshold on t or F, refused unless positive (a negative one formed one cluster of most of
    the mask, exit 0), where a model or a study takes one (the command line's own check is its option's)."""
    check_scalar(
        value,
        "`cluster_threshold`",
        numbers.Real,
        min_val=0,
        include_boundaries="neither",
        description="a positive t or F value, e.g. 3.1",
    )


MAX_THREADS = 1024  # more threads than any machine voxfit runs on has cores (each holds a tile of the data)


def check_n_jobs(n_jobs) -> int:
    """`n_jobs` as threads: a positive integer up to :data:`MAX_THREADS` (more would be refused later, by the
    memory its threads' tiles need, in words that do not name it)."""
    accepted = f"a number of threads from 1 to {MAX_THREADS}"
    return int(check_scalar(n_jobs, "`n_jobs`", min_val=1, max_val=MAX_THREADS, description=accepted))


def check_flag(value, name: str, *, none: bool = False):
    """`value` when it is True or False (numpy's booleans too; None as well with `none`); otherwise an
    :class:`InputError` naming `name`. A string such as ``"no"`` or a number would otherwise be read as true."""
    numpy_bool = getattr(value, "ndim", None) == 0 and getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if not (isinstance(value, bool) or numpy_bool or (none and value is None)):
        allowed = "True, False or None" if none else "True or False"
        raise InputError(f"{name} must be {allowed}; got {value!r}.")
    return value


def _describe(target_type: type, min_val, max_val, low_in: bool, high_in: bool) -> str:
    """What a range accepts, in words: "a positive integer", "a number > 0 and <= 1"."""
    kind = "integer" if target_type is numbers.Integral else "number"
    integral = kind == "integer"
    if max_val is None and (min_val, low_in) in ((0, False), *(((1, True),) if integral else ())):
        return f"a positive {kind}"
    if max_val is None and (min_val, low_in) == (0, True):
        return f"a non-negative {kind}"
    bounds = [f"{'>=' if low_in else '>'} {min_val}"] if min_val is not None else []
    bounds += [f"{'<=' if high_in else '<'} {max_val}"] if max_val is not None else []
    return f"{'an' if integral else 'a'} {kind}" + (" " + " and ".join(bounds) if bounds else "")


def repeated(names) -> list:
    """The names that appear more than once in `names`, sorted (one count of all: a header of 100,000 names is
    checked at once, where counting each name again was quadratic)."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def is_number(text: str) -> bool:
    """Whether `text` is a number as Python reads one (``float``: ``1e9``, ``nan`` and ``inf`` too)."""
    try:
        float(text)
    except ValueError:
        return False
    return True

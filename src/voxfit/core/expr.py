"""Contrast expressions over design column names, parsed by a small recursive-descent parser (no eval).

Grammar::

    contrast := row (";" row)*              several rows make an F contrast
    row      := sum
    sum      := product (("+" | "-") product)*
    product  := unary (("*" | "/") unary)*
    unary    := ("+" | "-") unary | atom
    atom     := NUMBER | NAME | "`" any text "`" | "(" sum ")"

A NAME is a design column name made of letters, digits, ``_``, ``.`` and ``^`` (not starting with a digit;
``^`` is no operator here, so SPM's modulator columns such as ``facesxrt^1`` need no quoting); any other
column name can be written between backticks. Every row must be linear in the columns: a number may
multiply or divide a column, two columns may not be multiplied, and a row may not contain a bare constant.
Examples: ``A - B``, ``0.5*A + 0.5*B``, ``(A + B)/2 - C``, ``A; B`` (F test of A and B).
"""

from __future__ import annotations

import difflib
import re

import numpy as np
from numpy.typing import NDArray

from ..exceptions import ContrastError

__all__ = ["MAX_EXPRESSION_LENGTH", "MAX_NESTING", "names_in", "parse_contrast"]

# Bounds on what the parser accepts, so that a hostile or mistyped expression is refused at once instead of
# exhausting the stack (each level of parentheses costs four Python frames) or the memory.
MAX_EXPRESSION_LENGTH = 100_000  # characters: a full F contrast of ~300 columns in words still fits
MAX_NESTING = 50  # levels of parentheses

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_.^]*)"
    r"|`(?P<quoted>[^`]+)`|(?P<op>[-+*/();]))"
)


def _tokenize(text: str) -> list[tuple[str, str | float, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ContrastError(
                f"cannot read contrast {text!r}: unexpected {text[pos:].strip()[:10]!r} at position {pos}."
            )
        kind = m.lastgroup
        value = float(m.group(kind)) if kind == "number" else m.group(kind)
        tokens.append(("name" if kind == "quoted" else kind, value, m.start(kind)))
        pos = m.end()
    return tokens


def names_in(text: str) -> set[str]:
    """The column names an expression holds (as the parser reads them: words and `quoted` names); none where it
    cannot be read (:func:`parse_contrast` says why)."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        return set()
    try:
        return {str(value) for kind, value, _ in _tokenize(text) if kind == "name"}
    except ContrastError:
        return set()


class _Parser:
    """Each rule returns a linear form: (constant, {column: coefficient})."""

    def __init__(self, text: str, names: tuple[str, ...]):
        self.text, self.names = text, names
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def error(self, what: str) -> ContrastError:
        shown = self.text if len(self.text) <= 80 else self.text[:60] + "..."
        # (trial types such as "face up", "1" or "house-down" are columns a plain name cannot write)
        odd = [n for n in self.names if getattr(_TOKEN.fullmatch(n), "lastgroup", None) != "name"]
        hint = ""
        if odd and "`" not in self.text:
            example = next((n for n in odd if n in self.text), odd[0])
            hint = f"; a column named with spaces, signs or a leading digit goes between backticks: `{example}`"
        return ContrastError(f"cannot read contrast {shown!r}: {what}{hint}.")

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", None, len(self.text))

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def rows(self) -> list[dict[str, float]]:
        rows = [self.row()]
        while self.peek()[1] == ";":
            self.take()
            rows.append(self.row())
        kind, value, pos = self.peek()
        if kind != "end":
            raise self.error(f"unexpected {value!r} at position {pos}")
        return rows

    def row(self) -> dict[str, float]:
        start = self.peek()[2]
        const, coefs = self.sum()
        if not (np.isfinite(const) and all(np.isfinite(v) for v in coefs.values())):
            raise self.error(
                f"a weight in the row starting at position {start} overflows (beyond 1.8e308); "
                "use weights of ordinary size (a t or F statistic does not depend on the scale of a row)"
            )
        if const != 0:  # (two groups coded 1 and 2 are columns group_1 and group_2: "1 - 2" named none of them)
            shown = ", ".join(self.names[:12]) + (", ..." if len(self.names) > 12 else "")
            meant = self._levels_meant()
            raise self.error(
                f"a bare number is not a contrast weight; write it as a multiple of a column (e.g. 2*A; the "
                f"columns are {shown})" + (f"; for the groups coded by those numbers, write {meant!r}" if meant else "")
            )
        coefs = {k: v for k, v in coefs.items() if v != 0}
        if not coefs:
            raise self.error(f"the row starting at position {start} has no non-zero column weight")
        return coefs

    def _levels_meant(self) -> str | None:
        """The contrast with each bare number n written as the one column named ``<column>_<n>`` (the levels of a
        numeric --two-sample column: "2 - 1" over grpnum_1 and grpnum_2), where every number has one; else None."""
        numbers = re.findall(r"(?<![\w.*])(\d+)(?![\w.*])", self.text)
        columns = {n: [c for c in self.names if c.endswith(f"_{n}")] for n in numbers}
        if not numbers or any(len(c) != 1 for c in columns.values()):
            return None
        return re.sub(r"(?<![\w.*])(\d+)(?![\w.*])", lambda m: columns[m.group(1)][0], self.text)

    def sum(self):
        const, coefs = self.product()
        while self.peek()[1] in ("+", "-"):
            sign = 1.0 if self.take()[1] == "+" else -1.0
            c2, k2 = self.product()
            const += sign * c2
            for k, v in k2.items():
                coefs[k] = coefs.get(k, 0.0) + sign * v
        return const, coefs

    def product(self):
        left = self.unary()
        kind, value, pos = self.peek()
        if kind in ("name", "number") or value == "(":
            raise self.error(f"expected an operator before {value!r} at position {pos} (write 2*A for a multiple)")
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            right = self.unary()
            if op == "/":
                if right[1]:
                    raise self.error("cannot divide by a column; contrasts must be linear")
                if right[0] == 0:
                    raise self.error("division by zero")
                left = (left[0] / right[0], {k: v / right[0] for k, v in left[1].items()})
            elif left[1] and right[1]:
                raise self.error("cannot multiply two columns; contrasts must be linear")
            else:
                (num, _), (c, lin) = (left, right) if not left[1] else (right, left)
                left = (num * c, {k: num * v for k, v in lin.items()})
        return left

    def unary(self):
        sign = 1.0
        while self.peek()[1] in ("+", "-"):  # a loop, not recursion: any run of signs costs one frame
            if self.take()[1] == "-":
                sign = -sign
        c, k = self.atom()
        return (c, k) if sign > 0 else (-c, {n: -v for n, v in k.items()})

    def atom(self):
        kind, value, pos = self.take()
        if kind == "number":
            return value, {}
        if kind == "name":
            if value not in self.names:
                close = difflib.get_close_matches(value, self.names, n=3)
                hint = (
                    f"did you mean {' or '.join(map(repr, close))}?"
                    if close
                    else f"columns are {', '.join(self.names)}"
                )
                raise self.error(f"unknown column {value!r} ({hint})")
            return 0.0, {value: 1.0}
        if value == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.error(
                    f"parentheses are nested more than {MAX_NESTING} deep (at position {pos}); simplify the expression"
                )
            inner = self.sum()
            self.depth -= 1
            if self.take()[1] != ")":
                raise self.error(f"missing ')' for the '(' at position {pos}")
            return inner
        raise self.error("unexpected end" if kind == "end" else f"unexpected {value!r} at position {pos}")


def parse_contrast(text: str, names: tuple[str, ...]) -> NDArray[np.float64]:
    """Parse a contrast expression into a (rows, len(names)) weight matrix.

    >>> parse_contrast("0.5*A + 0.5*B - C", ("A", "B", "C"))
    array([[ 0.5,  0.5, -1. ]])
    """
    if not text.strip():
        raise ContrastError("cannot read contrast '': it is empty; write e.g. 'A - B'.")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ContrastError(
            f"contrast expression of {len(text):,} characters ({text[:20]!r}...) is longer than the "
            f"limit of {MAX_EXPRESSION_LENGTH:,}; give the weights as numbers (e.g. an FSL .con file)."
        )
    numbers_only = re.fullmatch(r"[\s\[\](),;0-9.eE+-]*\d[\s\[\](),;0-9.eE+-]*", text)
    listed = re.search(r"[\[,]|\d\s+[-+]?\.?\d", text)  # ([1 -1], "1, -1", "0 1": not "1 - 2", a sum)
    if numbers_only and listed and len(names) > 1:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ContrastError(  # (SPM's weight vector [1 -1] read as 1 - 1: "no non-zero column weight")
            f"cannot read contrast {text[:40]!r}: weights as a list of numbers (SPM's [1 -1]) are not read here; "
            f"name the columns they weigh, e.g. '{names[0]} - {names[1]}' (the columns are {shown}), or give an FSL "
            ".con file."
        )
    rows = _Parser(text, tuple(names)).rows()
    if len(rows) > max(len(names), 2):  # (two rows always, as for weights: a row twice is the F of one row)
        shown = text[:40] + ("..." if len(text) > 40 else "")
        columns = f"{len(names)} column{'s' * (len(names) != 1)}"
        raise ContrastError(
            f"contrast {shown!r} has {len(rows):,} rows but the design has only {columns}; an F "
            "contrast tests at most one row per column (drop the redundant rows)."
        )
    out = np.zeros((len(rows), len(names)))
    index = {name: j for j, name in enumerate(names)}
    for r, coefs in enumerate(rows):
        for name, value in coefs.items():
            out[r, index[name]] = value
    return out

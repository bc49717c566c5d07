"""The statements that insert new job rows: multi-row ``INSERT ... VALUES``, constants inline.

A pushed batch's rows mostly share their values: most columns are NULL or hold a new job's
usual value (state ``waiting``, 3 attempts, ...) in every row. Those columns are left out of the
statement (NULL) or written into it as literals, so only the columns that vary are bound: 7 of
36 for a typical job. Rows go several to a statement rather than one per ``executemany`` step.
Measured with bench_instructions.py (tests/benchmarks/RESULTS.md).

Statement texts depend on the batch's shape (which columns are bound, which inline) and on the
number of rows. On SQLite, row counts are powers of two (a batch of 50 is three statements: 32,
16 and 2 rows), so a shape has at most a handful of texts, each prepared once and kept in the
driver's statement cache. On PostgreSQL each statement is a round trip, so a batch goes in as few
as the bound-value limit allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Any

from .dialect import CHUNK, COLUMNS, TABLE, Dialect

_CONSTANTS: dict[str, Any] = {
    "state": "waiting", "progress": 0, "priority": 0, "max_attempts": 3, "attempt": 0,
    "backoff": "exponential", "backoff_delay_ms": 1000, "lifo": False, "remove_on_complete": False,
    "remove_on_fail": False,
}  # fmt: skip
"""Values common enough in new rows to be written into the statement when every row of a batch
holds them. Only these (not any shared value): user text never enters SQL, and the number of
statement texts stays small."""
_INLINE = {COLUMNS.index(name): value for name, value in _CONSTANTS.items()}


def _literal(value: Any) -> str:
    if isinstance(value, bool):  # before int: a bool is an int
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not value.isidentifier():  # one of `_CONSTANTS`: a plain word
        raise TypeError(f"no SQL literal for {value!r}")
    return f"'{value}'"


Shape = tuple[tuple[int, ...], tuple[int, ...]]
"""Indexes (in `COLUMNS`) of the columns bound, and of those written inline."""


def insert_statements(d: Dialect, rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """``(sql, parameters)`` for each statement that inserts ``rows`` (full rows in `COLUMNS`
    order, as `codec.encode_job` makes them), together all of them."""
    shape = _shape(rows)
    pick = _picker(shape[0])
    most = CHUNK // len(shape[0])
    start = 0
    while start < len(rows):
        if d.postgres:  # each statement is a round trip: as few as can be
            size = min(most, len(rows) - start)
        else:
            size = min(_largest_power_of_two(most), _largest_power_of_two(len(rows) - start))
        part = rows[start : start + size]
        yield _insert_sql(d, shape, size), list(chain.from_iterable(map(pick, part)))
        start += size


def _shape(rows: Sequence[Sequence[Any]]) -> Shape:
    n = len(rows)
    bound: list[int] = []
    inline: list[int] = []
    for i, column in enumerate(zip(*rows, strict=True)):
        if column.count(None) == n:
            continue  # NULL: left out
        if i in _INLINE and column.count(_INLINE[i]) == n:
            # ``==`` holds across int and bool (0 == False), but each column holds one type
            inline.append(i)
        else:
            bound.append(i)
    return tuple(bound), tuple(inline)


def _largest_power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


@lru_cache(maxsize=64)
def _picker(bound: tuple[int, ...]) -> Any:
    get = itemgetter(*bound)
    return get if len(bound) > 1 else lambda row: (get(row),)


@lru_cache(maxsize=256)
def _insert_sql(d: Dialect, shape: Shape, rows: int) -> str:
    bound, inline = shape
    names = ", ".join(COLUMNS[i] for i in (*bound, *inline))
    one = "(" + ", ".join(["?"] * len(bound) + [_literal(_INLINE[i]) for i in inline]) + ")"
    return d.sql(f"INSERT INTO {TABLE} ({names}) VALUES {', '.join([one] * rows)}")

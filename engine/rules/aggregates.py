"""Window aggregates: ``count()``, ``count(x)``, ``sum``, ``avg``, ``min``,
``max``, ``stddev``, ``distinct``, ``first``, ``last``, ``rate``.

Each keeps a small accumulator that is plain data (a list), can be added to,
merged (session windows) and, for the sliding window, taken from. ``None``
values are skipped by every aggregate except ``count()``.

- ``count()`` events in the window; ``count(x)`` events where x is not null
- ``sum(x)``, ``avg(x)``: null when no value; ``stddev(x)``: population
  standard deviation (null when no value)
- ``min(x)``, ``max(x)``; ``first(x)``, ``last(x)``: the value of the earliest /
  latest event (event time, then arrival order) that has one
- ``distinct(x)``: number of distinct values
- ``rate()``: events per second of window length; ``rate(x)``: sum(x) per second

>>> acc = AGGREGATORS["avg"].new()
>>> for v in (1, 2, 3):
...     AGGREGATORS["avg"].add(acc, v, 0.0, 0)
>>> AGGREGATORS["avg"].result(acc, 60.0)
2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from engine.rules.expr import Expression


class Aggregator:
    """How one aggregate function accumulates. ``removable``: the sliding
    window can take values out again; otherwise it recomputes from its
    entries (``scan``)."""

    removable = True
    numeric = False

    def new(self) -> list[Any]:
        raise NotImplementedError

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        raise NotImplementedError

    def remove(self, acc: list[Any], value: Any) -> None:
        raise NotImplementedError

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        raise NotImplementedError

    def result(self, acc: list[Any], span: float) -> Any:
        raise NotImplementedError

    def scan(self, entries: list[list[Any]], column: int, span: float) -> Any:
        raise NotImplementedError


class _Count(Aggregator):
    def new(self) -> list[Any]:
        return [0]

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        if value is not None:
            acc[0] += 1

    def remove(self, acc: list[Any], value: Any) -> None:
        if value is not None:
            acc[0] -= 1

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        acc[0] += other[0]

    def result(self, acc: list[Any], span: float) -> Any:
        return acc[0]


class _Sum(Aggregator):
    numeric = True

    def new(self) -> list[Any]:
        return [0, 0]

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        if value is not None:
            acc[0] += 1
            acc[1] += value

    def remove(self, acc: list[Any], value: Any) -> None:
        if value is not None:
            acc[0] -= 1
            acc[1] = acc[1] - value if acc[0] else 0

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        acc[0] += other[0]
        acc[1] += other[1]

    def result(self, acc: list[Any], span: float) -> Any:
        return acc[1] if acc[0] else None


class _Rate(_Sum):
    """Per second of window length: of events (``rate()``) or of a sum; the
    accumulator is the sum's, only the result differs."""

    def result(self, acc: list[Any], span: float) -> Any:
        return acc[1] / span if span > 0 else None


class _Moments(Aggregator):
    """Welford's running mean and squared deviations: [n, mean, m2]."""

    numeric = True

    def __init__(self, stddev: bool) -> None:
        self.stddev = stddev

    def new(self) -> list[Any]:
        return [0, 0.0, 0.0]

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        if value is None:
            return
        n = acc[0] + 1
        delta = value - acc[1]
        mean = acc[1] + delta / n
        acc[0], acc[1], acc[2] = n, mean, acc[2] + delta * (value - mean)

    def remove(self, acc: list[Any], value: Any) -> None:
        if value is None:
            return
        n = acc[0] - 1
        if n <= 0:
            acc[0], acc[1], acc[2] = 0, 0.0, 0.0
            return
        old_mean = acc[1]
        mean = (old_mean * acc[0] - value) / n
        acc[0], acc[1], acc[2] = n, mean, max(0.0, acc[2] - (value - old_mean) * (value - mean))

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        n = acc[0] + other[0]
        if not other[0]:
            return
        delta = other[1] - acc[1]
        mean = acc[1] + delta * other[0] / n
        m2 = acc[2] + other[2] + delta * delta * acc[0] * other[0] / n
        acc[0], acc[1], acc[2] = n, mean, m2

    def result(self, acc: list[Any], span: float) -> Any:
        if not acc[0]:
            return None
        return math.sqrt(acc[2] / acc[0]) if self.stddev else acc[1]


class _Extreme(Aggregator):
    removable = False

    def __init__(self, smallest: bool) -> None:
        self.smallest = smallest

    def new(self) -> list[Any]:
        return [None]

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        if value is None:
            return
        current = acc[0]
        if current is None or (value < current if self.smallest else value > current):
            acc[0] = value

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        self.add(acc, other[0], 0.0, 0)

    def result(self, acc: list[Any], span: float) -> Any:
        return acc[0]

    def scan(self, entries: list[list[Any]], column: int, span: float) -> Any:
        values = [entry[column] for entry in entries if entry[column] is not None]
        if not values:
            return None
        return min(values) if self.smallest else max(values)


class _Edge(Aggregator):
    """first / last: [ts, seq, value] of the earliest / latest valued event."""

    removable = False

    def __init__(self, earliest: bool) -> None:
        self.earliest = earliest

    def new(self) -> list[Any]:
        return [None, None, None]

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        if value is None:
            return
        if acc[0] is None:
            acc[0], acc[1], acc[2] = ts, seq, value
            return
        before = (ts, seq) < (acc[0], acc[1])
        if before == self.earliest:
            acc[0], acc[1], acc[2] = ts, seq, value

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        if other[0] is not None:
            self.add(acc, other[2], other[0], other[1])

    def result(self, acc: list[Any], span: float) -> Any:
        return acc[2]

    def scan(self, entries: list[list[Any]], column: int, span: float) -> Any:
        ordered = entries if self.earliest else reversed(entries)
        for entry in ordered:
            if entry[column] is not None:
                return entry[column]
        return None


def distinct_key(value: Any) -> str:
    """A string key under which equal values (1 == 1.0) meet."""
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, bool):
        return "b1" if value else "b0"
    if isinstance(value, int | float):
        try:
            as_float = float(value)
        except OverflowError:
            return "n" + repr(value)
        return "n" + repr(as_float) if as_float == value else "n" + repr(value)
    try:
        return "j" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return "r" + repr(value)


class _Distinct(Aggregator):
    def new(self) -> list[Any]:
        return [{}]

    def add(self, acc: list[Any], value: Any, ts: float, seq: int) -> None:
        if value is not None:
            key = distinct_key(value)
            acc[0][key] = acc[0].get(key, 0) + 1

    def remove(self, acc: list[Any], value: Any) -> None:
        if value is None:
            return
        key = distinct_key(value)
        left = acc[0].get(key, 0) - 1
        if left > 0:
            acc[0][key] = left
        else:
            acc[0].pop(key, None)

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        for key, count in other[0].items():
            acc[0][key] = acc[0].get(key, 0) + count

    def result(self, acc: list[Any], span: float) -> Any:
        return len(acc[0])


#: The aggregate functions, by name.
AGGREGATORS: dict[str, Aggregator] = {
    "count": _Count(),
    "sum": _Sum(),
    "avg": _Moments(stddev=False),
    "stddev": _Moments(stddev=True),
    "min": _Extreme(smallest=True),
    "max": _Extreme(smallest=False),
    "first": _Edge(earliest=True),
    "last": _Edge(earliest=False),
    "distinct": _Distinct(),
    "rate": _Rate(),
}
#: Aggregates whose argument is optional (``count()``, ``rate()``).
OPTIONAL_ARGUMENT: frozenset[str] = frozenset({"count", "rate"})


@dataclass(frozen=True)
class Aggregate:
    """``name: function(argument)`` of a window; no argument counts events."""

    name: str
    function: str
    argument: Expression | None

    @property
    def aggregator(self) -> Aggregator:
        return AGGREGATORS[self.function]

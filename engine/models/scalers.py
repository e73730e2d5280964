"""River's MinMaxScaler with the same state and results, minus two method calls per feature.

A model with a ``MinMaxScaler`` step scales every event twice (once to
score, once to learn) and learns once. River reads and updates its
``stats.Min``/``stats.Max`` through ``get()``/``update()`` calls; this
subclass reads and writes their ``min``/``max`` attributes directly, which is
the same arithmetic in the same order on the same objects, so states pickle
and restore across both classes. A rolling window (``window_size``) is left
to River.

>>> from river import preprocessing
>>> fast, river = MinMaxScaler(), preprocessing.MinMaxScaler()
>>> for x in ({"a": 2.0, "b": 1}, {"a": 6.0, "b": 3}, {"a": 3.0, "b": 2}):
...     fast.learn_one(x)
...     river.learn_one(x)
>>> fast.transform_one({"a": 5.0, "b": 9}) == river.transform_one({"a": 5.0, "b": 9})
True
>>> fast.transform_one({"a": 5.0, "b": 9})
{'a': 0.75, 'b': 4.0}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from river import preprocessing


class MinMaxScaler(preprocessing.MinMaxScaler):
    """``river.preprocessing.MinMaxScaler``, exactly, with its hot methods inlined.

    Examples
    --------
    >>> scaler = MinMaxScaler()
    >>> scaler.learn_one({"x": 10.0})
    >>> scaler.transform_one({"x": 10.0})  # min == max: River's 0.0
    {'x': 0.0}
    >>> type(MinMaxScaler.from_river(preprocessing.MinMaxScaler())).__name__
    'MinMaxScaler'
    """

    def learn_one(self, x: Mapping[Hashable, Any]) -> None:
        if self.window_size is not None:
            super().learn_one(x)
            return
        min_, max_ = self.min, self.max
        for i, xi in x.items():
            # stats.Min.update and stats.Max.update, inlined
            low = min_[i]
            if xi < low.min:
                low.min = xi
            high = max_[i]
            if xi > high.max:
                high.max = xi

    def transform_one(self, x: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.window_size is not None:
            return super().transform_one(x)
        min_, max_ = self.min, self.max
        result = {}
        for i, xi in x.items():
            lo = min_[i].min
            d = max_[i].max - lo
            result[i] = (xi - lo) / d if d else 0.0
        return result

    @classmethod
    def from_river(cls, scaler: preprocessing.MinMaxScaler) -> MinMaxScaler:
        """This class around the state of a River scaler (shared, not copied)."""
        fast = cls.__new__(cls)
        fast.__dict__.update(scaler.__dict__)
        return fast

"""Exponential backoff with jitter and a bounded delay.

Retry *n* (1-based) waits a random time in ``[cap/2, cap]`` where
``cap = min(max_s, base_s * factor**(n-1))``: delays grow quickly while an
outage lasts, never exceed ``max_s``, and the jitter keeps many sink replicas
from hammering a recovering Cassandra in lock step.

>>> backoff = Backoff(base_s=0.5, factor=2.0, max_s=30.0, rng=random.Random(7))
>>> [backoff.cap(n) for n in (1, 2, 3, 7, 8, 5000)]
[0.5, 1.0, 2.0, 30.0, 30.0, 30.0]
>>> all(1.0 <= backoff.delay(3) <= 2.0 for _ in range(100))
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for successive retries of the same operation."""

    base_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < self.base_s or self.factor < 1:
            raise ValueError("need 0 <= base_s <= max_s and factor >= 1")

    def cap(self, attempt: int) -> float:
        """The largest delay of retry ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        try:
            grown = self.base_s * self.factor ** (attempt - 1)
        except OverflowError:  # a long outage: the power outgrew floats
            return self.max_s
        return min(self.max_s, grown)

    def delay(self, attempt: int) -> float:
        cap = self.cap(attempt)
        return self.rng.uniform(cap / 2, cap)

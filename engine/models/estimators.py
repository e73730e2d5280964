"""Estimators of our own, written to River's interface and allowlisted by name."""

from __future__ import annotations

from river import base, stats


class DaysUntilEmpty(base.Regressor):
    """Days until a consumable runs out, from the device's own consumption rate.

    The naive estimate is ``level / (level_drop_per_cycle * cycles_per_day)``:
    the fill level (percent) over the percent used per day. The device state
    learns both rates online; this model learns, from labels when there are any
    (observed days until empty), one calibration factor: the running mean of
    ``observed / naive``. Without labels the factor stays 1. The estimate is
    capped at ``max_days`` (a device that is barely used is "not soon"); it is
    ``None`` when the level or a rate is unknown, so no score is given.

    Parameters
    ----------
    max_days
        Largest estimate returned.

    Examples
    --------
    >>> model = DaysUntilEmpty()
    >>> x = {"level": 30.0, "level_drop_per_cycle": 2.0, "cycles_per_day": 1.5}
    >>> model.predict_one(x)
    10.0
    >>> model.learn_one(x, 8.0)
    >>> model.predict_one(x)
    8.0
    >>> model.predict_one({"level": 30.0}) is None
    True
    """

    def __init__(self, max_days: float = 365.0) -> None:
        if not max_days > 0:
            raise ValueError("max_days must be positive")
        self.max_days = max_days
        self.calibration = stats.Mean()

    def _naive_days(self, x: dict) -> float | None:
        level = x.get("level")
        drop = x.get("level_drop_per_cycle")
        per_day = x.get("cycles_per_day")
        if level is None or drop is None or per_day is None:
            return None
        rate = drop * per_day
        if rate <= 0:
            return float(self.max_days)
        return max(0.0, level / rate)

    def learn_one(self, x: dict, y: float) -> None:
        naive = self._naive_days(x)
        if naive is None or naive <= 0 or naive >= self.max_days or y < 0:
            return
        self.calibration.update(y / naive)

    def predict_one(self, x: dict) -> float | None:  # type: ignore[override]
        naive = self._naive_days(x)
        if naive is None:
            return None
        factor = self.calibration.get() if self.calibration.n else 1.0
        return min(float(self.max_days), naive * factor)

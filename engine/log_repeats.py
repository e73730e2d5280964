"""One line per trouble, not one per retry: repeated log records are folded.

A Kafka client that cannot reach its broker logs every reconnect attempt and
every failed metadata refresh, thousands of lines a second per process (the
chaos suite's broker restart wrote 60 MB of them per worker in a minute). A
repeat of the same message (same logger, level and format string) within
``window_s`` of the last one shown is dropped and counted; the next one shown
after the window says how many were folded into it.

>>> folder = RepeatFolder(window_s=30.0, clock=iter([0.0, 1.0, 2.0, 40.0]).__next__)
>>> def record(host: str) -> logging.LogRecord:
...     return logging.LogRecord("aiokafka", logging.ERROR, "", 0,
...                              "Unable connect to node %s", (host,), None)
>>> [folder.filter(record(h)) for h in ("a", "b", "c")]
[True, False, False]
>>> last = record("d"); folder.filter(last), last.getMessage()
(True, 'Unable connect to node d (2 more like it in the last 40 s)')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

#: The loggers of the Kafka clients, whose connection troubles repeat.
CHATTY_LOGGERS = (
    "aiokafka",
    "aiokafka.cluster",
    "aiokafka.conn",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.sender",
)


class RepeatFolder(logging.Filter):
    """A logging filter that folds repeats of a message within ``window_s``."""

    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        #: (logger, level, format string) -> (when last shown, repeats folded since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        shown = self._seen.get(key)
        if shown is not None and now - shown[0] < self.window_s:
            self._seen[key] = (shown[0], shown[1] + 1)
            return False
        if shown is not None and shown[1]:
            record.msg = (
                f"{record.msg} ({shown[1]} more like it in the last {now - shown[0]:.0f} s)"
            )
        self._seen[key] = (now, 0)
        return True


def fold_repeats(logger_names: Iterable[str] = CHATTY_LOGGERS, window_s: float = 30.0) -> None:
    """Fold repeated records of ``logger_names`` (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFolder) for f in logger.filters):
            logger.addFilter(RepeatFolder(window_s))

"""A broker away must not bury the worker's log under client retries."""

from __future__ import annotations

import logging

from engine.log_repeats import CHATTY_LOGGERS, fold_repeats


def test_a_storm_of_retries_is_one_line_and_other_messages_pass() -> None:
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    logger = logging.getLogger("aiokafka")
    handler = Catch()
    logger.addHandler(handler)
    try:
        fold_repeats()
        fold_repeats()  # idempotent: one filter per logger
        assert all(len(logging.getLogger(n).filters) == 1 for n in CHATTY_LOGGERS)
        for attempt in range(1000):
            logger.error("Unable connect to node with id %s: %s", 1, f"refused #{attempt}")
        logger.error("Unable to update metadata from [%s]", 1)
        logger.warning("Unable connect to node with id %s: %s", 1, "a warning is its own kind")
    finally:
        logger.removeHandler(handler)
    assert caught == [
        "Unable connect to node with id 1: refused #0",
        "Unable to update metadata from [1]",
        "Unable connect to node with id 1: a warning is its own kind",
    ]

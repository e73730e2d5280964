"""Argument types for the command line: numbers checked where they are read,
so a negative count is refused with a clear message instead of running; and
the configuration file, refused the same way.

>>> count("3"), non_negative("0"), non_negative_number("12.5")
(3, 0, 12.5)
>>> count("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be a whole number of at least 1, not 0
"""

from __future__ import annotations

import argparse
import sys

from engine.config import ConfigError, Settings, load_settings
from engine.durations import parse_duration


def count(text: str) -> int:
    """A whole number of at least 1 (customers, events, steps, ...)."""
    return _int(text, minimum=1)


def non_negative(text: str) -> int:
    """A whole number of at least 0 (where 0 means "none" or "off")."""
    return _int(text, minimum=0)


def non_negative_number(text: str) -> float:
    """A number of at least 0 (a rate, seconds, a share of something; 0 as documented)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, not {text}")
    return value


def duration(text: str) -> float:
    """A time span as everywhere else (``engine.durations``): ``2d``, ``90m``, ``12.5``.

    >>> duration("2d"), duration("90m"), duration("12.5")
    (172800.0, 5400.0, 12.5)
    """
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of at least {minimum}, not {value}"
        )
    return value


def settings(config: str | None, command: str) -> Settings:
    """The configuration ``config`` names (None or "": the default), or, when
    it is unusable, the reason on stderr as ``<command>: ...`` and exit status 2."""
    try:
        return load_settings(config or "")
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc

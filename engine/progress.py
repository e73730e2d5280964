"""Progress of long command-line work (simulate, bench, backtest, replay), on
stderr and only where someone watches it: a bar on a terminal, nothing when
stderr is a pipe or a CI log, so output meant for programs stays clean.

``IOTCRM_PROGRESS=1`` shows it anyway, ``IOTCRM_PROGRESS=0`` never.

>>> with progress("replaying", total=10, enabled=True) as bar:
...     bar.update(3)
...     bar.n, bar.total
(3, 10)
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

#: The environment variable that forces progress on ("1") or off ("0").
PROGRESS_ENV = "IOTCRM_PROGRESS"


def progress_enabled(environ: dict[str, str] | None = None, stream: object = None) -> bool:
    """Whether to show progress: as ``IOTCRM_PROGRESS`` says, else when
    ``stream`` (stderr) is a terminal.

    >>> progress_enabled({"IOTCRM_PROGRESS": "1"}), progress_enabled({"IOTCRM_PROGRESS": "0"})
    (True, False)
    """
    setting = (os.environ if environ is None else environ).get(PROGRESS_ENV)
    if setting is not None:
        return setting.strip() not in ("", "0", "false", "no", "off")
    isatty = getattr(sys.stderr if stream is None else stream, "isatty", None)
    return bool(isatty and isatty())


def progress(
    description: str,
    total: int | None = None,
    unit: str = "events",
    enabled: bool | None = None,
) -> tqdm:
    """A progress bar on stderr (a counter with a rate when ``total`` is unknown)."""
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not (progress_enabled() if enabled is None else enabled),
        mininterval=0.5,
        dynamic_ncols=True,
        leave=True,
    )

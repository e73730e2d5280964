"""``iotcrm worker`` with cProfile switched on and off from outside, for the
benchmark's live profile of the engine.

Run: ``python -m loadtest.profiled_worker OUT.prof`` (with the worker's
``IOTCRM_*`` environment). ``kill -s RTMIN+1`` starts profiling,
``kill -s RTMIN+2`` stops it and writes ``OUT.prof`` (pstats format). The
profiler measures wall time, so time the event loop spends waiting shows up
(as ``select.epoll.poll``). Real-time signals are used because Faust's
worker takes SIGUSR1 and SIGUSR2 for itself.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from pathlib import Path
from types import FrameType

START = signal.SIGRTMIN + 1
STOP = signal.SIGRTMIN + 2


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m loadtest.profiled_worker OUT.prof", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(START, start)
    signal.signal(STOP, stop)
    from engine.cli import main as iotcrm

    return iotcrm(["worker"])


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the Cassandra store and sink against the local servers.

Run: ``.venv/bin/python -m loadtest.bench_store [--actions N] [--batch B] [--in-flight K]
[--skip-sink]``

The measurements live in :mod:`engine.store.bench` (next to the store they
measure); this module puts them with the other benchmarks.
"""

from __future__ import annotations

import asyncio

from engine.store.bench import main

if __name__ == "__main__":
    asyncio.run(main())

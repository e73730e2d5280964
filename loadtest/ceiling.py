"""The benchmark's ceiling: a plain aiokafka consumer that only consumes and
decodes device events, subscribed by pattern to the per-device topics like
ingest. Nothing a real pipeline does costs less, so it bounds what any
Python consumer can reach on this broker and machine.

Run as its own process (so its CPU and memory are its own)::

    python -m loadtest.ceiling --bootstrap 127.0.0.1:19092 \\
        --pattern '^b1\\.device\\..+' --group b1-ceiling --status /tmp/ceiling.json

It writes ``--status`` (JSON: records consumed, decoded, wall times of the
first and latest batch) about five times a second, and on SIGTERM the
publish time (the record's Kafka timestamp, ms) and receive time (s) of every
record to ``<status>.published.f64`` and ``<status>.received.f64`` (native
doubles), for the latency figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from array import array
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer


class CeilingConsumer:
    """Consume and decode; count and time. ``run()`` until ``stop()``."""

    def __init__(
        self,
        bootstrap: str,
        pattern: str,
        group: str,
        status_path: Path,
        batch_size: int = 500,
        fetch_max_wait_ms: int = 20,
        fetch_min_bytes: int = 1,
    ) -> None:
        self.bootstrap = bootstrap
        self.pattern = pattern
        self.group = group
        self.status_path = status_path
        self.batch_size = batch_size
        #: Answered at once by default (the lowest latency); larger minimums trade
        #: latency for CPU.
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.consumed = 0
        self.decoded = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.published_ms = array("d")
        self.received = array("d")
        self._stopping = asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "consumed": self.consumed,
            "decoded": self.decoded,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }

    def write_status(self) -> None:
        partial = self.status_path.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(self.status()))
        partial.replace(self.status_path)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_min_bytes=self.fetch_min_bytes,
            # The benchmark freezes the process while it publishes a backlog.
            session_timeout_ms=30000,
        )
        await consumer.start()
        consumer.subscribe(pattern=self.pattern)
        reporter = asyncio.create_task(self._report())
        decode = msgspec.json.Decoder().decode
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
                if not batches:
                    continue
                now = time.time()
                for records in batches.values():
                    for record in records:
                        try:
                            decode(record.value)
                        except msgspec.DecodeError:
                            pass
                        else:
                            self.decoded += 1
                        self.published_ms.append(record.timestamp)
                        self.received.append(now)
                    self.consumed += len(records)
                if self.first_at is None:
                    self.first_at = now
                self.last_at = time.time()
        finally:
            reporter.cancel()
            await consumer.stop()
            self.write_status()
            with open(f"{self.status_path}.published.f64", "wb") as out:
                self.published_ms.tofile(out)
            with open(f"{self.status_path}.received.f64", "wb") as out:
                self.received.tofile(out)

    async def _report(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(0.2)


def read_timings(status_path: Path) -> tuple[array[float], array[float]]:
    """The (publish ms, receive s) arrays a stopped ceiling wrote beside its status."""
    published, received = array("d"), array("d")
    published.frombytes(Path(f"{status_path}.published.f64").read_bytes())
    received.frombytes(Path(f"{status_path}.received.f64").read_bytes())
    return published, received


async def _main(args: argparse.Namespace) -> None:
    ceiling = CeilingConsumer(
        args.bootstrap,
        args.pattern,
        args.group,
        Path(args.status),
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        fetch_min_bytes=args.fetch_min_bytes,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ceiling.stop)
    await ceiling.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--pattern", required=True, help="topic regex, e.g. '^iot\\.device\\..+'")
    parser.add_argument("--group", required=True)
    parser.add_argument("--status", required=True, help="JSON status file to keep up to date")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=20)
    parser.add_argument("--fetch-min-bytes", type=int, default=1)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Benchmark of the fleet simulator: generation, JSONL writing and publishing.

Run: ``.venv/bin/python -m loadtest.bench_simulator [--customers N]
[--devices-per-customer M] [--span 2d] [--publish] [--topic-mode shared]``

Rates are given per wall-clock second and per CPU second of this process
(the fair figure on a shared machine). Generation is measured for the wire
format (mixed units, malformed events, duplicates) and for the canonical
format (as rules see events), from building the fleet to the last encoded
record. ``--publish`` also sends the wire stream to the local Kafka as fast
as possible; run it twice on a fresh broker, since the first publish into new
topics includes the broker electing their leaders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import replace

from engine import cli_args
from loadtest.simulator import SimParams, Simulation


def _generate(params: SimParams) -> dict[str, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    sim = Simulation(params)
    count = size = 0
    for _, payload in sim.events():
        count += 1
        size += len(payload)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "records": count,
        "seconds": round(elapsed, 3),
        "records_per_s": round(count / elapsed),
        "records_per_cpu_s": round(count / cpu),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "bytes_per_record": round(size / count, 1),
    }


def _write_jsonl(params: SimParams) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as handle:
        path = handle.name
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        sim = Simulation(params)
        count = 0
        with open(path, "wb") as out:
            for _, payload in sim.events():
                out.write(payload)
                out.write(b"\n")
                count += 1
        sim.truth()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        os.unlink(path)
    return {
        "records": count,
        "seconds": round(elapsed, 3),
        "records_per_s": round(count / elapsed),
        "records_per_cpu_s": round(count / cpu),
    }


def _publish(params: SimParams, bootstrap: str, topic_mode: str) -> dict[str, float]:
    from loadtest.publish import PublishOptions, publish

    sim = Simulation(params)
    options = PublishOptions(bootstrap=bootstrap, topic_mode=topic_mode, send_outcomes=False)
    stats = asyncio.run(publish(sim, options))
    return {
        "records": stats.records,
        "seconds": round(stats.elapsed_s, 3),
        "records_per_s": round(stats.rate),
        "mb_per_s": round(stats.bytes / stats.elapsed_s / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--devices-per-customer", type=int, default=2)
    parser.add_argument("--span", type=cli_args.duration, default=2 * 86400.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--publish", action="store_true", help="also publish to Kafka")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic-mode", choices=("per-device", "shared"), default="per-device")
    args = parser.parse_args(argv)
    params = SimParams(
        customers=args.customers,
        devices_per_customer=args.devices_per_customer,
        span_s=args.span,
        seed=args.seed,
        end_ts=1_763_700_000.0,
    )
    results = {
        "generate_wire": _generate(params),
        "generate_canonical": _generate(replace(params, canonical=True)),
        "write_jsonl_wire": _write_jsonl(params),
    }
    if args.publish:
        results[f"publish_{args.topic_mode}"] = _publish(params, args.bootstrap, args.topic_mode)
    print(
        f"fleet: {args.customers} customers x {args.devices_per_customer} devices, "
        f"span {args.span / 3600:g} h, seed {args.seed}"
    )
    print(
        f"{'stage':<22} {'records':>10} {'seconds':>8} {'records/s':>10} "
        f"{'per CPU s':>10} {'MB/s':>6}"
    )
    for stage, row in results.items():
        per_cpu = row.get("records_per_cpu_s")
        print(
            f"{stage:<22} {row['records']:>10} {row['seconds']:>8} "
            f"{row['records_per_s']:>10,} {'' if per_cpu is None else f'{per_cpu:,}':>10} "
            f"{row.get('mb_per_s', ''):>6}"
        )
    print(json.dumps({"bench": "simulator", "params": vars(args), "results": results}))


if __name__ == "__main__":
    main()

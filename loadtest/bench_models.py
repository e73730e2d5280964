"""Benchmark of the model layer: µs per event per model, and snapshot cost.

Run: ``.venv/bin/python -m loadtest.bench_models [--events N] [--customers N]``

Events are normalised (as ingest hands them to the customer actor) and carry
the customer and device state the shipped models read; a share of customers
get a delayed churn outcome. For each shipped model alone, and for the whole
set, it reports the cost of ``ModelSet.process`` (predict + learn) per event
of the mixed stream and per event the model actually scores, the same work
done by River directly (the layer's overhead is the difference), the cost of
``observe_outcome``, and the size and time of ``snapshot()`` / ``restore()``
for one partition's state.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from engine.models import ModelSet, load_models

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "models.yaml"
#: device type -> (kinds it sends, share of the fleet)
FLEET = {
    "washer": (("telemetry", "telemetry", "consumable", "usage"), 0.35),
    "compressor": (("telemetry",), 0.15),
    "vehicle": (("telemetry", "telemetry", "error"), 0.25),
    "wearable": (("usage", "status"), 0.25),
}
SEGMENTS = ("family", "single", "business", "senior")

Record = tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]


def synthetic(n_events: int, n_customers: int, seed: int = 42) -> list[Record]:
    """``("event", event, customer, device)`` and ``("outcome", outcome, {}, {})`` records."""
    rng = random.Random(seed)
    types = list(FLEET)
    weights = [share for _, share in FLEET.values()]
    customers = [
        {
            "customer_id": f"c{i:06d}",
            "segment": rng.choice(SEGMENTS),
            "usage_baseline_min": rng.uniform(20, 120),
            "support_cases_30d": rng.randrange(4),
            "fading": rng.random() < 0.1,
        }
        for i in range(n_customers)
    ]
    records: list[Record] = []
    ts = 1_763_700_000.0
    for i in range(n_events):
        ts += rng.expovariate(50.0)
        customer = customers[rng.randrange(n_customers)]
        device_type = rng.choices(types, weights)[0]
        kind = rng.choice(FLEET[device_type][0])
        faulty = rng.random() < 0.01
        event: dict[str, Any] = {
            "id": f"e{i}",
            "ts": ts,
            "device_id": f"{customer['customer_id']}-{device_type}",
            "customer_id": customer["customer_id"],
            "device_type": device_type,
            "kind": kind,
        }
        if kind == "telemetry":
            event["temperature"] = rng.gauss(45.0, 4.0) + (25.0 if faulty else 0.0)
            event["vibration"] = abs(rng.gauss(0.3, 0.06)) + (0.6 if faulty else 0.0)
            if device_type == "compressor":
                event["power"] = rng.gauss(900.0, 80.0)
            event["is_anomaly"] = faulty
        if device_type == "washer":
            event["level"] = rng.uniform(3.0, 100.0)
        fading = customer["fading"]
        state = {
            **customer,
            "usage_today_min": rng.uniform(0, 10) if fading else rng.uniform(20, 150),
            "days_since_use": rng.randrange(5, 20) if fading else rng.randrange(2),
        }
        device = {
            "level_drop_per_cycle": rng.uniform(0.8, 2.5),
            "cycles_per_day": rng.uniform(0.3, 3),
        }
        records.append(("event", event, state, device))
        if rng.random() < 0.02:
            outcome_type = "customer_churned" if fading else "customer_retained"
            records.append(
                (
                    "outcome",
                    {
                        "outcome_id": f"o{i}",
                        "type": outcome_type,
                        "customer_id": customer["customer_id"],
                        "ts": ts + 1.0,
                    },
                    {},
                    {},
                )
            )
    return records


def replay(models: ModelSet, records: list[Record]) -> tuple[float, float]:
    """Seconds spent in process() and in observe_outcome()."""
    process_s = outcome_s = 0.0
    clock = time.perf_counter
    for what, record, customer, device in records:
        if what == "event":
            start = clock()
            models.process(record, customer=customer, device=device)
            process_s += clock() - start
        else:
            start = clock()
            models.observe_outcome(record)
            outcome_s += clock() - start
    return process_s, outcome_s


def river_direct(name: str, models: ModelSet, records: list[Record]) -> float:
    """The same River calls without the layer (features extracted beforehand); seconds.

    Anomaly: score + learn; models with a label field: predict + learn; models
    learning from outcomes or without labels: predict only (their learning
    happens in observe_outcome, timed separately).
    """
    runtime = models._by_name[name]  # the bench peeks at the runtime on purpose
    spec = runtime.spec
    label_field = getattr(spec.label, "field", None)
    scored: list[tuple[str, dict[str, Any], Any]] = []
    for what, event, customer, device in records:
        if what != "event" or not runtime.applies(event, customer, device):
            continue
        scope = runtime.scope_key(event, customer, device)
        x = runtime._extract(event, customer, device)
        if isinstance(scope, str) and x:
            y = event.get(label_field.path[0]) if label_field is not None else None
            scored.append((scope, x, y))
    instances: dict[str, Any] = {}
    start = time.perf_counter()
    for scope, x, y in scored:
        model = instances.get(scope)
        if model is None:
            model = instances[scope] = spec.pipeline.build()
        if spec.kind == "anomaly":
            model.score_one(x)
            model.learn_one(x)
            continue
        if spec.kind == "binary":
            model.predict_proba_one(x)
        else:
            model.predict_one(x)
        if y is not None:
            model.learn_one(x, y)
    return time.perf_counter() - start


def best_of(repeats: int, run: Callable[[], Any]) -> Any:
    results = [run() for _ in range(repeats)]
    return min(results, key=lambda r: r[0] if isinstance(r, tuple) else r)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_models", description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=5_000, help="per partition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=str(SHIPPED))
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    records = synthetic(args.events, args.customers)
    n_events = sum(1 for what, *_ in records if what == "event")
    n_outcomes = len(records) - n_events
    names = load_models(args.models).names
    results: dict[str, Any] = {
        "events": n_events,
        "outcomes": n_outcomes,
        "customers": args.customers,
        "models": {},
    }

    for name in [*names, "ALL"]:
        only = None if name == "ALL" else [name]

        def run(only: list[str] | None = only) -> tuple[float, float, ModelSet]:
            models = load_models(args.models, only=only)
            gc.collect()
            process_s, outcome_s = replay(models, records)
            return process_s, outcome_s, models

        process_s, outcome_s, models = best_of(args.repeats, run)
        report = models.metrics()
        scored = sum(entry["n"] for entry in report.values())
        entry: dict[str, Any] = {
            "us_per_event": 1e6 * process_s / n_events,
            "scored": scored,
            "us_per_scored_event": 1e6 * process_s / scored if scored else None,
            "us_per_outcome": 1e6 * outcome_s / n_outcomes if n_outcomes else None,
            "events_per_s": n_events / process_s,
        }
        if name != "ALL":
            direct_s = min(river_direct(name, models, records) for _ in range(args.repeats))
            entry["river_us_per_scored_event"] = 1e6 * direct_s / scored if scored else None
        blob = models.snapshot()
        dump_s = statistics.median(_timed(models.snapshot) for _ in range(5))
        fresh = load_models(args.models, only=only)
        load_s = statistics.median(_timed(partial(fresh.restore, blob)) for _ in range(5))
        entry.update(
            snapshot_bytes=len(blob),
            snapshot_ms=1e3 * dump_s,
            restore_ms=1e3 * load_s,
            metrics={k: v for k, v in report[name].items() if k != "kind"} if only else None,
        )
        results["models"][name] = entry

    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"model layer benchmark: {n_events} events, {n_outcomes} outcomes, "
        f"{args.customers} customers in one partition, best of {args.repeats}"
    )
    header = (
        f"{'model':<16}{'µs/event':>10}{'scored':>9}{'µs/scored':>11}{'river µs':>10}"
        f"{'µs/outcome':>12}{'events/s':>11}{'snapshot':>12}{'dump ms':>9}{'load ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, entry in results["models"].items():
        river_us = _num(entry.get("river_us_per_scored_event"))
        print(
            f"{name:<16}{entry['us_per_event']:>10.2f}{entry['scored']:>9}"
            f"{_num(entry['us_per_scored_event']):>11}{river_us:>10}"
            f"{_num(entry['us_per_outcome']):>12}{entry['events_per_s']:>11.0f}"
            f"{entry['snapshot_bytes'] / 1024:>9.1f} KB"
            f"{entry['snapshot_ms']:>9.2f}{entry['restore_ms']:>9.2f}"
        )
    print()
    for name, entry in results["models"].items():
        if entry["metrics"]:
            shown = {
                k: round(v, 4) if isinstance(v, float) else v for k, v in entry["metrics"].items()
            }
            print(f"{name}: {shown}")
    return 0


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())

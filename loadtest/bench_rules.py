"""Benchmark of the rule engine: µs per event with 10, 100 and 1,000 rules.

Run: ``.venv/bin/python -m loadtest.bench_rules [--customers N] [--hours H] [--repeat R]``

The event stream is the device simulator's (canonical: as ingest hands events
to the customer actor), with each customer's profile and a set of model
scores per event. Every rule set holds the shipped rules plus a generated mix
shaped like a large deployment: most rules are specific (one per error code,
one per calibrated device, per status), a few are generic per device type;
all six trigger kinds appear. The same stream runs through the three rule sets
side by side in each repetition (fresh state each time); the median of the
repetitions is reported, with the ratio 1,000 / 10 (target: <= 3).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from engine.rules import RuleEngine, RuleSet, compile_rules, load_ruleset
from loadtest.simulator import SimParams, Simulation

SHIPPED = Path(__file__).resolve().parents[1] / "rules"
DEVICE_TYPES = ("washer", "compressor", "vehicle", "wearable")
READINGS = {
    "washer": "temperature",
    "compressor": "temperature",
    "vehicle": "temperature",
    "wearable": "battery",
}
ERROR_CODES = ("P0420", "E35", "P0171", "A07", "UE", "A01", "F06", "E21", "H12", "P0300")

Stream = list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]


def _generic(i: int, rng: random.Random) -> str:
    """A rule for every device of a type (kind + device_type)."""
    device_type = DEVICE_TYPES[i % len(DEVICE_TYPES)]
    reading = READINGS[device_type]
    limit = round(rng.uniform(60, 120), 1)
    shape = i % 3
    if shape == 0:
        when = (
            f"condition: \"event.kind == 'telemetry' and event.device_type == '{device_type}' "
            f'and event.{reading} > {limit} and score.anomaly > 0.9"'
        )
    elif shape == 1:
        when = (
            f'sustained: {{condition: "event.{reading} > {limit}", for: 15m, '
            f"filter: \"event.kind == 'telemetry' and event.device_type == '{device_type}'\"}}"
        )
    else:
        when = (
            f"silence: {{for: {rng.choice(['3h', '6h', '12h'])}, "
            f"filter: \"event.kind == 'telemetry' and event.device_type == '{device_type}'\"}}"
        )
    return _rule(f"generic-{i}", when, "support_case")


def _error_code(i: int) -> str:
    """A rule for one error code (real codes first, then made-up ones)."""
    code = ERROR_CODES[i] if i < len(ERROR_CODES) else f"X{i:04d}"
    match = f"event.kind == 'error' and event.error_code == '{code}'"
    shape = i % 3
    if shape == 0:
        when = f'condition: "{match}"'
    elif shape == 1:
        when = (
            f'window: {{type: sliding, size: 30m, filter: "{match}", '
            f'aggregates: {{n: count()}}, having: "window.n >= 2"}}'
        )
    else:
        when = (
            f'sequence: {{within: 10m, steps: [{{as: e, condition: "{match}"}}, '
            f"{{as: r, condition: \"event.kind == 'status' and event.state == 'reboot'\"}}]}}"
        )
    return _rule(f"error-{i}", when, "support_case")


def _calibrated(i: int, devices: list[tuple[str, str]], rng: random.Random) -> str:
    """A threshold calibrated for one device (its own limit)."""
    device_id, device_type = devices[i % len(devices)]
    reading = READINGS[device_type]
    limit = round(rng.uniform(95, 150), 1)
    if i % 2:
        when = f"condition: \"event.device_id == '{device_id}' and event.{reading} > {limit}\""
    else:
        when = (
            f'sustained: {{condition: "event.{reading} > {limit}", for: 20m, '
            f"filter: \"event.device_id == '{device_id}' and event.kind == 'telemetry'\"}}"
        )
    return _rule(f"device-{i}", when, "maintenance_booking")


def _status(i: int) -> str:
    state = ("fault", "offline", "reboot")[i % 3]
    when = (
        f"absence: {{after: \"event.kind == 'status' and event.state == '{state}'\", "
        f"missing: \"event.kind == 'status' and event.state == 'online'\", within: 30m}}"
    )
    return _rule(f"status-{i}", when, "support_case")


def _rule(rule_id: str, when: str, action_type: str) -> str:
    return (
        f"- id: {rule_id}\n  key: device\n  cooldown: 1h\n  when: {{{when}}}\n"
        f'  action: {{type: {action_type}, payload: {{device: "{{{{ event.device_id }}}}"}}}}\n'
    )


def build_ruleset(total: int, devices: list[tuple[str, str]], seed: int = 7) -> RuleSet:
    """The shipped rules plus generated ones, ``total`` enabled rules in all."""
    shipped = load_ruleset(SHIPPED)
    rng = random.Random(seed)
    extra = total - len(shipped.rules)
    generic = max(1, round(extra * 0.02))
    status = max(1, round(extra * 0.03))
    errors = (extra - generic - status) // 2
    calibrated = extra - generic - status - errors
    text = "".join(
        [_generic(i, rng) for i in range(generic)]
        + [_status(i) for i in range(status)]
        + [_error_code(i) for i in range(errors)]
        + [_calibrated(i, devices, rng) for i in range(calibrated)]
    )
    generated = compile_rules(text, "<generated>")
    return RuleSet(shipped.rules + generated.rules)


def build_stream(customers: int, hours: float, seed: int) -> tuple[Stream, list[tuple[str, str]]]:
    sim = Simulation(
        SimParams(
            customers=customers,
            canonical=True,
            span_s=hours * 3600,
            seed=seed,
            end_ts=1_763_700_000.0,
        )
    )
    profiles = dict(sim.profiles())
    devices = [(d.device_id, d.device_type) for d in sim.fleet.devices]
    rng = random.Random(seed)
    stream: Stream = []
    for _device_id, raw in sim.events():
        event = orjson.loads(raw)
        scores = {
            "anomaly": round(rng.random(), 3),
            "churn": round(rng.random() * 0.5, 3),
            "depletion_days": round(rng.uniform(1, 30), 1),
        }
        stream.append((event, profiles.get(event["customer_id"], {}), scores))
    return stream, devices


def run_once(engine: RuleEngine, stream: Stream) -> tuple[float, int, int]:
    """(seconds, firings, JSON bytes of all states) of one pass over the stream."""
    states: dict[str, dict[str, Any]] = {}
    firings = 0
    process = engine.process
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for event, customer, score in stream:
            state = states.get(event["customer_id"])
            if state is None:
                state = states[event["customer_id"]] = engine.new_state()
            firings += len(process(state, event, customer=customer, score=score))
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    size = sum(len(orjson.dumps(s)) for s in states.values())
    return elapsed, firings, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args(argv)

    stream, devices = build_stream(args.customers, args.hours, args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    engines: dict[int, RuleEngine] = {}
    compile_ms: dict[int, float] = {}
    for size in sizes:
        started = time.perf_counter()
        engines[size] = RuleEngine(build_ruleset(size, devices))
        compile_ms[size] = (time.perf_counter() - started) * 1000
    print(
        f"stream: {len(stream)} events, {args.customers} customers, {len(devices)} devices, "
        f"{args.hours:g} h simulated; {args.repeat} repetitions, median reported"
    )
    timings: dict[int, list[float]] = {size: [] for size in sizes}
    outcome: dict[int, tuple[int, int]] = {}
    for _ in range(args.repeat):
        for size in sizes:  # side by side: drift hits every size alike
            seconds, firings, state_bytes = run_once(engines[size], stream)
            timings[size].append(seconds / len(stream) * 1e6)
            outcome[size] = (firings, state_bytes)
    print(
        f"{'rules':>6} {'µs/event':>9} {'min':>7} {'max':>7} {'firings':>8} "
        f"{'state KiB/customer':>19} {'compile ms':>11}"
    )
    medians = {}
    for size in sizes:
        medians[size] = statistics.median(timings[size])
        firings, state_bytes = outcome[size]
        print(
            f"{len(engines[size].ruleset):>6} {medians[size]:>9.2f} {min(timings[size]):>7.2f} "
            f"{max(timings[size]):>7.2f} {firings:>8} "
            f"{state_bytes / 1024 / max(1, args.customers):>19.1f} {compile_ms[size]:>11.0f}"
        )
    if len(sizes) > 1:
        ratio = medians[sizes[-1]] / medians[sizes[0]]
        verdict = "OK" if ratio <= 3 else "ABOVE TARGET"
        print(f"ratio {sizes[-1]}/{sizes[0]}: {ratio:.2f} (target <= 3: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the engine's CPU time goes: its hot path replayed in process.

The same code a worker runs per record, without Kafka or Faust: ingest's
``Inspector`` over raw device bytes (in batches of ``worker.batch_size``),
the JSON round trip to the customer-keyed topic, then per customer and batch
``engine.actor.CustomerActor`` (hygiene, aggregates, the shipped models, the
shipped rules, actions) on states kept decoded between batches, each changed
state encoded once per checkpoint (``tables.state``), and the timers of idle
customers. Run twice over the same events: once plain for
the CPU µs per event, once under cProfile for the split by component.

Run: ``.venv/bin/python -m loadtest.hotpath [--customers N] [--events N]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from engine.actor import CustomerActor
from engine.config import Settings, load_settings
from engine.models import ModelSet, load_models
from engine.quality import (
    Accepted,
    CustomerProfiles,
    DeviceRegistry,
    Inspector,
    SourcePosition,
    StreamHygiene,
)
from engine.rules import RuleEngine, load_ruleset
from tables.state import (
    CustomerState,
    apply_profile,
    customer_view,
    device_view,
    encode_state,
    new_customer_state,
)

REPO = Path(__file__).resolve().parents[1]

#: Component of a profiled function, by the first fragment of its file path
#: (or of its name, for built-ins) that matches; the rest is "other".
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("engine/quality/inspector", "ingest: decode, validate, normalise"),
    ("engine/quality/readings", "ingest: decode, validate, normalise"),
    ("engine/quality/timestamps", "ingest: decode, validate, normalise"),
    ("msgspec.json.Decoder", "ingest: decode, validate, normalise"),
    ("engine/quality/hygiene", "actor: dedup and lateness"),
    ("engine/models", "models (engine.models)"),
    ("river/", "models (River)"),
    ("engine/rules", "rules"),
    ("engine/actions", "rules"),
    ("msgspec.msgpack", "actor: state codec"),
    ("tables/state", "actor: aggregates and views"),
    ("engine/actor", "actor: dispatch"),
    ("orjson", "JSON to and from the by-customer topic"),
)


#: The same for a live worker: its Kafka clients, Faust, the sink and the loop too.
LIVE_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("select.epoll", "idle: the event loop waiting"),
    ("aiokafka/protocol", "Kafka clients: protocol encode and decode (aiokafka)"),
    ("aiokafka/record", "Kafka clients: protocol encode and decode (aiokafka)"),
    ("aiokafka/consumer", "Kafka clients: consumers, fetching (aiokafka)"),
    ("aiokafka/producer", "Kafka clients: producers (aiokafka)"),
    ("aiokafka/cluster", "Kafka clients: metadata (aiokafka)"),
    ("aiokafka/", "Kafka clients: connections and other (aiokafka)"),
    ("engine/store", "Cassandra sink"),
    ("cassandra", "Cassandra sink"),
    ("rocksdict", "Faust tables and streams"),
    ("faust/", "Faust tables and streams"),
    ("mode/", "Faust tables and streams"),
    ("agents/", "worker glue (agents/)"),
    *COMPONENTS,
    ("asyncio/", "asyncio event loop"),
)


def component_of(where: str, components: tuple[tuple[str, str], ...] = COMPONENTS) -> str:
    """
    >>> component_of("/x/site-packages/river/anomaly/hst.py:29(_walk_score)")
    'models (River)'
    >>> component_of("~:0(<method 'decode' of 'msgspec.msgpack.Decoder' objects>)")
    'actor: state codec'
    >>> component_of("/x/asyncio/events.py:1(run)")
    'other'
    >>> component_of("/x/asyncio/events.py:1(run)", LIVE_COMPONENTS)
    'asyncio event loop'
    """
    for fragment, component in components:
        if fragment in where:
            return component
    return "other"


def summarize_profile(
    stats: pstats.Stats, components: tuple[tuple[str, str], ...], top: int = 15
) -> dict[str, Any]:
    """Share of the profiled time per component (a built-in such as
    ``dict.get`` counts for whoever called it) and the top functions by self time."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    by_component: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, callers) in raw.items():
        where = f"{filename}:{line}({name})"
        component = component_of(where, components)
        if component == "other" and filename == "~" and callers:
            for (c_file, c_line, c_name), caller_stats in callers.items():
                caller = component_of(f"{c_file}:{c_line}({c_name})", components)
                by_component[caller] += caller_stats[2]
        else:
            by_component[component] += tottime
        rows.append((tottime, cumtime, calls, _short(where)))
    rows.sort(reverse=True)
    return {
        "seconds": round(total, 2),
        "components_pct": {
            name: round(100 * seconds / total, 1)
            for name, seconds in sorted(by_component.items(), key=lambda kv: -kv[1])
        },
        "top_functions": [
            {
                "function": where,
                "self_pct": round(100 * tottime / total, 1),
                "cumulative_pct": round(100 * cumtime / total, 1),
                "calls": calls,
            }
            for tottime, cumtime, calls, where in rows[:top]
        ],
    }


#: Batches per checkpoint: the worker checkpoints every second, about eight
#: batches of 500 at its backlog rate on this machine.
CHECKPOINT_BATCHES = 8


class HotPath:
    """The worker's per-record work over a list of raw (device_id, bytes) records."""

    def __init__(
        self,
        settings: Settings,
        registry: list[tuple[str, dict[str, Any]]],
        profiles: list[tuple[str, dict[str, Any]]],
    ) -> None:
        self.settings = settings
        self.registry = DeviceRegistry()
        for key, value in registry:
            self.registry.apply(key, orjson.dumps(value))
        self.profiles = CustomerProfiles()
        for key, value in profiles:
            self.profiles.apply(key, orjson.dumps(value))
        self.prefix = settings.kafka.device_topic_prefix

    def fresh(self) -> tuple[Inspector, CustomerActor, ModelSet]:
        """New ingest inspector, actor and models: a worker's objects before its first record."""
        settings = self.settings
        return (
            Inspector(settings.quality, self.registry, device_topic_prefix=self.prefix),
            CustomerActor(
                RuleEngine(load_ruleset(REPO / "rules")), StreamHygiene(settings.quality)
            ),
            load_models(REPO / "models" / "models.yaml"),
        )

    def run(
        self,
        records: list[tuple[str, bytes]],
        objects: tuple[Inspector, CustomerActor, ModelSet],
    ) -> int:
        """Process every record with ``objects`` (from ``fresh()``); returns the
        number of actions."""
        settings = self.settings
        inspector, actor, models = objects
        # As the live worker: states stay decoded between batches, and each
        # changed one is encoded once per checkpoint (CHECKPOINT_BATCHES).
        states: dict[str, CustomerState] = {}
        stored: dict[str, bytes] = {}
        dirty: set[str] = set()
        due: dict[str, float] = {}
        actions = 0
        batch_size = settings.worker.batch_size
        now = None
        for number, start in enumerate(range(0, len(records), batch_size), start=1):
            batch = records[start : start + batch_size]
            verdicts = inspector.inspect_many(
                [(raw, SourcePosition(self.prefix + d, 0, 0)) for d, raw in batch]
            )
            wire = [orjson.dumps(v.event) for v in verdicts if isinstance(v, Accepted)]
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for payload in wire:
                event = orjson.loads(payload)
                groups[event["customer_id"]].append(event)
                now = event["ts"] if now is None else max(now, event["ts"])
            emitted_at = time.time()
            touched: dict[str, CustomerState] = {}
            for customer_id, events in groups.items():
                state = self._load(states, customer_id)
                out = actor.handle_events(state, events, models, emitted_at)
                actions += len(out.actions)
                touched[customer_id] = state
            if now is not None:
                for customer_id in [c for c, t in due.items() if t <= now]:
                    state = touched.get(customer_id) or self._load(states, customer_id)
                    actions += len(actor.advance(state, now, emitted_at).actions)
                    touched[customer_id] = state
                    del due[customer_id]
            for customer_id, state in touched.items():
                next_due = actor.next_due(state)
                if next_due is not None:
                    due[customer_id] = next_due
            dirty |= touched.keys()
            if number % CHECKPOINT_BATCHES == 0 or start + batch_size >= len(records):
                for customer_id in dirty:
                    stored[customer_id] = encode_state(states[customer_id])
                dirty.clear()
            _ = [customer_view(s) for s in touched.values()]  # the 360 summaries
            _ = [device_view(d) for s in touched.values() for d in s.devices.values()]
        return actions

    def _load(self, states: dict[str, CustomerState], customer_id: str) -> CustomerState:
        state = states.get(customer_id)
        if state is None:
            state = states[customer_id] = new_customer_state(customer_id)
            apply_profile(state, self.profiles.lookup(customer_id))
        return state


def profile_hot_path(work: Any, settings: Settings, events: int, top: int = 15) -> dict[str, Any]:
    """µs per event of the hot path over the first ``events`` records of a
    bench workload, and the profile's split by component and top functions."""
    records = work.records[:events]
    path = HotPath(settings, work.sim.registry_records(), work.sim.profiles())
    plain, profiled = path.fresh(), path.fresh()
    # CPU time, not wall time: the machine may be busy with other work.
    began = time.process_time()
    actions = path.run(records, plain)
    plain_s = time.process_time() - began
    profiler = cProfile.Profile()
    profiler.enable()
    path.run(records, profiled)
    profiler.disable()
    return {
        "events": len(records),
        "actions": actions,
        "us_per_event": round(plain_s / len(records) * 1e6, 1),
        **summarize_profile(pstats.Stats(profiler), COMPONENTS, top),
    }


def _short(where: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def main() -> None:
    from loadtest.bench import BenchOptions, generate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    work = generate(BenchOptions(customers=args.customers, events=args.events, warmup=0))
    print(
        orjson.dumps(
            profile_hot_path(work, load_settings(), args.events), option=orjson.OPT_INDENT_2
        ).decode()
    )


if __name__ == "__main__":
    main()

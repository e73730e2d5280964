"""The rule engine inside a running worker, on the real broker.

- a changed rule file takes effect within seconds, without a restart;
- a change that does not compile is refused (logged and shown by /health with
  file:line:col) and the rules in force stay in force;
- a reload keeps the state of unchanged rules and starts changed ones afresh;
- every action names the rule and version that produced it;
- timers fire for idle keys: the partition's time moves with the wall clock;
- the shipped rules (rules/) fire on hand-made episodes, consent respected.

Event times are close to now and increasing, as a live fleet sends them, so
the wall-clock idle allowance behaves as in production. Nothing waits a fixed
time: absence is proven with a later action of the same customer, because the
actor acknowledges a batch's actions before it reads the next batch.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from engine.actions import action_schema
from engine.rules import action_id, load_ruleset
from loadtest.harness import WorkerProcess, wait_for
from tests.integration.kit import REPO, Namespace, TopicReader, read_all, register, send_json

ACTION_TYPES = ("coupon", "maintenance_booking", "retention_offer", "support_case")
#: The reload promise: a changed rule file is in force this soon after the write.
RELOAD_BUDGET_S = 5.0


def threshold_rule(version: int, above: float) -> str:
    return f"""\
- id: hot-device
  version: {version}
  key: device
  when:
    condition: "event.kind == 'telemetry' and event.temperature > {above}"
  action:
    type: support_case
    payload:
      threshold: {above}
      device_id: "{{{{ event.device_id }}}}"
"""


def event(event_id: str, device_id: str, ts: float, kind: str = "telemetry", **fields: Any) -> dict:
    return {"id": event_id, "ts": ts, "device_id": device_id, "kind": kind, **fields}


def replace_file(path: Path, text: str) -> float:
    """Write a rule file the way deploy tools do (write aside, rename over), so
    the watcher never reads half a file; returns the wall time of the change."""
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(text)
    os.replace(aside, path)
    return time.time()


class ActionLog:
    """Actions read from the namespace's action topics, each with the wall time
    this test first saw it."""

    def __init__(self, namespace: Namespace) -> None:
        self.reader = TopicReader(
            namespace.settings.kafka.bootstrap,
            [namespace.action_topic(kind) for kind in ACTION_TYPES],
        )
        self.seen: list[tuple[float, dict[str, Any]]] = []

    async def __aenter__(self) -> ActionLog:
        await self.reader.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.reader.__aexit__(*exc)

    async def poll(self) -> list[dict[str, Any]]:
        records = await self.reader.poll()
        now = time.time()
        for record in records[len(self.seen) :]:
            action = orjson.loads(record.value)
            jsonschema.validate(action, action_schema())
            assert record.key == action["customer_id"].encode(), "actions are keyed by customer"
            self.seen.append((now, action))
        return [action for _, action in self.seen]

    @property
    def actions(self) -> list[dict[str, Any]]:
        """Everything seen so far, in arrival order (no polling)."""
        return [action for _, action in self.seen]

    def seen_at(self, action: dict[str, Any]) -> float:
        return next(at for at, seen in self.seen if seen is action)

    async def first(
        self, matches: Callable[[dict[str, Any]], bool], *, timeout: float = 30.0, what: str
    ) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            return next((a for a in await self.poll() if matches(a)), None)

        return await wait_for(found, timeout=timeout, what=what)


def by_rule(rule_id: str, version: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def matches(action: dict[str, Any]) -> bool:
        rule = action["rule"]
        return rule["id"] == rule_id and (version is None or rule["version"] == version)

    return matches


def summary(action: dict[str, Any]) -> tuple[str, int, str, list[Any]]:
    return (
        action["rule"]["id"],
        action["rule"]["version"],
        action["device_id"],
        action["evidence"]["event_ids"],
    )


def assert_identity(action: dict[str, Any], rule_id: str, version: int, key: str) -> None:
    """The action names its rule and version, and its id is the stable hash of
    exactly that rule version and trigger."""
    assert action["rule"] == {"id": rule_id, "version": version}
    bounds = _bounds(action)
    expected = action_id(rule_id, version, "device", key, action["evidence"]["event_ids"], bounds)
    assert action["action_id"] == expected


def _bounds(action: dict[str, Any]) -> list[float] | None:
    evidence = action["evidence"]
    if evidence["trigger"] == "silence":
        return [evidence["silent_since"], action["at"]]
    if evidence["trigger"] == "sustained":
        return [evidence["since"], action["at"]]
    if evidence["trigger"] == "window":
        return [evidence["start"], evidence["end"]]
    return None


async def start_worker(namespace: Namespace, customers: int, **overrides: str) -> WorkerProcess:
    """A ready worker that has applied the registered customers' profiles, so
    consent and tier are known before the first event."""
    worker = namespace.worker(**overrides).start()
    await worker.wait_ready()
    await wait_for(
        lambda: _actor(worker).get("profiles", 0) >= customers,
        timeout=60,
        what=f"{customers} customer profiles applied",
    )
    return worker


def _actor(worker: WorkerProcess) -> dict[str, Any]:
    return (worker.metrics() or {}).get("actor") or {}


def _rules_status(worker: WorkerProcess) -> dict[str, Any]:
    return (worker.get("/health") or {}).get("rules") or {}


async def send_all(
    producer: AIOKafkaProducer, namespace: Namespace, events: Iterable[dict]
) -> None:
    for item in events:
        await send_json(producer, namespace.device_topic(item["device_id"]), None, item)


@pytest.fixture
def rules_dir(tmp_path: Path, namespace: Namespace) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    namespace.env["IOTCRM_RULES_PATH"] = str(path)
    return path


# --------------------------------------------------------------------- reload


async def test_a_changed_rule_is_in_force_within_seconds_without_restart(
    namespace: Namespace, producer: AIOKafkaProducer, rules_dir: Path
) -> None:
    hot = rules_dir / "hot.yaml"
    hot.write_text(threshold_rule(version=1, above=80))
    await register(producer, namespace, {"d1": ("c1", "compressor")})
    worker = await start_worker(namespace, customers=1)

    async with ActionLog(namespace) as actions:
        await send_all(producer, namespace, [event("e0", "d1", time.time(), temperature=90.0)])
        old = await actions.first(by_rule("hot-device"), what="action of version 1")
        assert_identity(old, "hot-device", 1, "d1")
        assert old["payload"] == {"threshold": 80, "device_id": "d1"}

        written_at = replace_file(hot, threshold_rule(version=2, above=60))
        # 70 C is hot only for version 2: probes fire once the change is in force.
        sent_at: dict[str, float] = {}
        probes = (f"p{n}" for n in itertools.count(1))

        async def probe_fired() -> dict[str, Any] | None:
            probe_id = next(probes)
            sent_at[probe_id] = time.time()
            await send_all(
                producer, namespace, [event(probe_id, "d1", time.time(), temperature=70.0)]
            )
            return next((a for a in await actions.poll() if a["rule"]["version"] == 2), None)

        new = await wait_for(probe_fired, timeout=30, interval=0, what="action of version 2")

    (probe_id,) = new["evidence"]["event_ids"]
    assert_identity(new, "hot-device", 2, "d1")
    assert new["payload"] == {"threshold": 60, "device_id": "d1"}
    in_force_after = actions.seen_at(new) - written_at
    event_latency = actions.seen_at(new) - sent_at[probe_id]
    print(
        f"reload: action {in_force_after:.2f}s after the write "
        f"(event latency {event_latency:.2f}s, {len(sent_at)} probes)"
    )
    assert in_force_after < RELOAD_BUDGET_S + event_latency
    assert [summary(a) for a in actions.actions if a["rule"]["version"] == 1] == [
        ("hot-device", 1, "d1", ["e0"])
    ], "a probe never matched the old version"
    assert worker.alive(), "the change was taken without a restart"
    status = _rules_status(worker)
    assert status["reloads"] == 1 and status["refused_change_errors"] == []
    assert status["loaded_at"] >= written_at


async def test_an_invalid_change_is_refused_and_the_rules_in_force_stay(
    namespace: Namespace, producer: AIOKafkaProducer, rules_dir: Path
) -> None:
    hot = rules_dir / "hot.yaml"
    hot.write_text(threshold_rule(version=1, above=80))
    await register(producer, namespace, {"d1": ("c1", "compressor")})
    worker = await start_worker(namespace, customers=1)

    broken = threshold_rule(version=2, above=60).replace("> 60", "> treshold")
    replace_file(hot, broken)
    line_no, line = next(
        (n, text) for n, text in enumerate(broken.splitlines(), 1) if "treshold" in text
    )
    where = f"{hot}:{line_no}:{line.index('treshold') + 1}: error[R202]: unknown name 'treshold'"

    status = await wait_for(
        lambda: _rules_status(worker).get("refused_change_errors"),
        timeout=10,
        what="refused change in /health",
    )
    assert len(status) == 1 and status[0].startswith(where), status
    await wait_for(
        lambda: where in worker.log_path.read_text(errors="replace"),
        timeout=10,
        what="error in the log",
    )
    assert _rules_status(worker)["reloads"] == 0

    async with ActionLog(namespace) as actions:
        now = time.time()
        await send_all(
            producer,
            namespace,
            [
                event("e1", "d1", now, temperature=70.0),
                event("e2", "d1", now + 0.1, temperature=90.0),
            ],
        )
        fired = await actions.first(by_rule("hot-device"), what="the old rule firing")
        assert_identity(fired, "hot-device", 1, "d1")
        assert fired["evidence"]["event_ids"] == ["e2"], "70 C is not hot for the rule in force"

        # Fixing the file lifts the refusal and the fixed version takes over.
        replace_file(hot, threshold_rule(version=2, above=60))
        await wait_for(
            lambda: _rules_status(worker).get("reloads") == 1, timeout=10, what="fixed reload"
        )
        assert _rules_status(worker)["refused_change_errors"] == []
        await send_all(producer, namespace, [event("e3", "d1", time.time(), temperature=70.0)])
        fixed = await actions.first(by_rule("hot-device", 2), what="the fixed rule firing")
    assert fixed["evidence"]["event_ids"] == ["e3"]
    assert [summary(a) for a in actions.actions] == [
        ("hot-device", 1, "d1", ["e2"]),
        ("hot-device", 2, "d1", ["e3"]),
    ]


KEPT_RULES = """\
- id: kept-sequence
  version: 1
  key: device
  when:
    sequence:
      within: 10m
      steps:
        - {as: error, condition: "event.kind == 'error'"}
        - {as: reboot, condition: "event.kind == 'status' and event.state == 'reboot'"}
  action: {type: support_case, payload: {code: "{{ error.error_code }}"}}
- id: kept-window
  version: 1
  key: device
  when:
    window:
      type: sliding
      size: 10m
      filter: "event.kind == 'error'"
      aggregates: {errors: count()}
      having: "window.errors >= 3"
  action: {type: support_case, payload: {errors: "{{ window.errors }}"}}
- id: kept-sustained
  version: 1
  key: device
  when:
    sustained:
      condition: "event.vibration > 0.8"
      filter: "event.kind == 'telemetry'"
      for: 5m
  action: {type: maintenance_booking, payload: {vibration: "{{ event.vibration }}"}}
"""


def changed_window(version: int) -> str:
    return f"""\
- id: changed-window
  version: {version}
  key: device
  when:
    window:
      type: sliding
      size: 10m
      filter: "event.kind == 'error'"
      aggregates: {{errors: count()}}
      having: "window.errors >= 3"
  action: {{type: support_case, payload: {{errors: "{{{{ window.errors }}}}"}}}}
"""


async def test_a_reload_keeps_unchanged_rules_state_and_restarts_changed_rules(
    namespace: Namespace, producer: AIOKafkaProducer, rules_dir: Path
) -> None:
    (rules_dir / "kept.yaml").write_text(KEPT_RULES)
    changed = rules_dir / "changed.yaml"
    changed.write_text(changed_window(version=1))
    await register(producer, namespace, {"d1": ("c1", "washer")})
    worker = await start_worker(namespace, customers=1)

    # Far enough back that every step fits before now, near enough that the
    # few seconds the partition ages with the wall clock cannot reach a timer.
    t0 = time.time() - 600
    before = [
        event("t1", "d1", t0, vibration=0.9),
        event("e1", "d1", t0 + 10, kind="error", error_code="E1"),
        event("e2", "d1", t0 + 20, kind="error", error_code="E2"),
    ]
    after = [
        event("t2", "d1", t0 + 100, vibration=0.95),
        event("e3", "d1", t0 + 200, kind="error", error_code="E3"),
        event("r1", "d1", t0 + 210, kind="status", state="reboot"),
        event("t3", "d1", t0 + 310, vibration=0.9),
        event("e4", "d1", t0 + 320, kind="error", error_code="E4"),
        event("e5", "d1", t0 + 330, kind="error", error_code="E5"),
    ]
    async with ActionLog(namespace) as actions:
        await send_all(producer, namespace, before)
        await wait_for(lambda: _actor(worker).get("events") == 3, timeout=30, what="half episodes")
        assert await actions.poll() == [], "no episode is complete yet"

        replace_file(changed, changed_window(version=2))
        await wait_for(lambda: _rules_status(worker).get("reloads") == 1, timeout=10, what="reload")
        await send_all(producer, namespace, after)
        # e5 is the last event: once its action is out, every earlier one is.
        await actions.first(by_rule("changed-window"), what="the changed rule's first firing")

    fired = await read_all_actions(namespace)
    assert sorted(summary(a) for a in fired) == sorted(
        [
            # Unchanged rules finish the episodes they began before the reload.
            ("kept-window", 1, "d1", ["e1", "e2", "e3"]),
            ("kept-sequence", 1, "d1", ["e1", "r1"]),
            ("kept-sustained", 1, "d1", ["t1", "t2"]),
            # The changed rule forgot e1 and e2: its third error is e5.
            ("changed-window", 2, "d1", ["e3", "e4", "e5"]),
        ]
    )
    at = {a["rule"]["id"]: a["at"] for a in fired}
    assert at["kept-sustained"] == pytest.approx(t0 + 300), "the timer began at t1, not t2"
    assert at["kept-window"] == pytest.approx(t0 + 200)
    assert at["changed-window"] == pytest.approx(t0 + 330)
    for action in fired:
        assert_identity(action, action["rule"]["id"], action["rule"]["version"], "d1")


async def read_all_actions(namespace: Namespace) -> list[dict[str, Any]]:
    bootstrap = namespace.settings.kafka.bootstrap
    records = []
    for kind in ACTION_TYPES:
        records += await read_all(bootstrap, namespace.action_topic(kind))
    return [orjson.loads(record.value) for record in records]


# --------------------------------------------------------------------- timers

IDLE_RULES = """\
- id: device-quiet
  version: 4
  key: device
  when: {silence: {for: 3s, filter: "event.kind == 'telemetry'"}}
  action: {type: support_case, payload: {last_seen: "{{ event.ts }}"}}
- id: vibration-held
  version: 2
  key: device
  when: {sustained: {condition: "event.vibration > 0.8", for: 2s}}
  action: {type: maintenance_booking, payload: {vibration: "{{ event.vibration }}"}}
"""


async def test_timers_of_an_idle_device_fire_with_the_wall_clock(
    namespace: Namespace, producer: AIOKafkaProducer, rules_dir: Path
) -> None:
    (rules_dir / "idle.yaml").write_text(IDLE_RULES)
    await register(producer, namespace, {"d1": ("c1", "compressor")})
    worker = await start_worker(
        namespace,
        customers=1,
        IOTCRM_WORKER_IDLE_ALLOWANCE_S="1",
        IOTCRM_QUALITY_DEVICE_SKEW_S="0.5",
    )

    async with ActionLog(namespace) as actions:
        ts = time.time()
        await send_all(producer, namespace, [event("only", "d1", ts, vibration=0.9)])
        held = await actions.first(by_rule("vibration-held"), what="sustained rule by timer")
        quiet = await actions.first(
            lambda a: by_rule("device-quiet")(a) and a["at"] > ts + 5,
            what="the silence watchdog firing twice",
        )
        silences = [a for a in actions.actions if by_rule("device-quiet")(a)]

    assert _actor(worker)["events"] == 1, "no event but the first one reached the actor"
    delays = [a["emitted_at"] - a["at"] for a in (held, *silences[:2])]
    print("timer firings after their due time: " + ", ".join(f"{d:.2f}s" for d in delays))
    # Idle allowance (1 s), the devices' skew (0.5 s), ingest's check of the
    # sources' ends and a tick (1 s) bound the delay; 10 s leaves room for a busy host.
    assert max(delays) < 10
    assert held["at"] == pytest.approx(ts + 2), "a timer's firing is stamped with its due time"
    assert held["evidence"]["event_ids"] == ["only"]
    assert held["emitted_at"] >= ts + 2, "the timer fired when the wall clock reached it"
    assert_identity(held, "vibration-held", 2, "d1")

    # The watchdog re-arms after each firing: due at ts + 3, then ts + 6, ...
    assert [a["at"] for a in silences[:2]] == [pytest.approx(ts + 3), pytest.approx(ts + 6)]
    assert quiet is silences[1]
    for n, silence in enumerate(silences[:2], 1):
        assert silence["evidence"]["event_ids"] == ["only"]
        assert silence["evidence"]["silent_since"] == pytest.approx(ts)
        assert silence["payload"] == {"last_seen": pytest.approx(ts)}
        assert silence["emitted_at"] >= ts + 3 * n
        assert_identity(silence, "device-quiet", 4, "d1")
    assert silences[0]["action_id"] != silences[1]["action_id"]


# ------------------------------------------------------------- shipped rules


async def test_the_shipped_rules_fire_live_and_respect_consent(
    namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    await register(
        producer,
        namespace,
        {
            "w1": ("c1", "washer"),
            "k1": ("c1", "compressor"),
            "v1": ("c1", "vehicle"),
            "w2": ("c2", "washer"),
        },
        consent={
            "c1": {"marketing": True, "service": True},
            "c2": {"marketing": False, "service": True},
        },
    )
    worker = await start_worker(namespace, customers=2)

    now = time.time()
    # Each device's events in time order, as a device sends them.
    episode = [
        # c1's washer runs low on detergent: a coupon (c1 accepts marketing).
        event("w1a", "w1", now - 600, kind="consumable", level=22.5),
        event("w1b", "w1", now - 500, kind="consumable", level=12.0),
        # c1's compressor vibrates above 0.8 g for ten minutes: a booking.
        event("k1a", "k1", now - 700, vibration=0.9),
        event("k1b", "k1", now - 400, vibration=0.95),
        event("k1c", "k1", now - 90, vibration=0.97),
        # c1's vehicle: three errors within ten minutes, then a reboot.
        event("v1a", "v1", now - 300, kind="error", error_code="E17"),
        event("v1b", "v1", now - 280, kind="error", error_code="E17"),
        event("v1c", "v1", now - 260, kind="error", error_code="E42"),
        event("v1r", "v1", now - 240, kind="status", state="reboot"),
        # c2's washer runs low too, but c2 refused marketing: no coupon.
        event("w2a", "w2", now - 700, vibration=0.9),
        event("w2b", "w2", now - 500, kind="consumable", level=10.0),
    ]
    async with ActionLog(namespace) as actions:
        await send_all(producer, namespace, episode)
        await actions.first(by_rule("maintenance-vibration"), what="booking for k1")
        await actions.first(by_rule("support-error-then-reboot"), what="reboot case")
        await actions.first(by_rule("coupon-detergent-low"), what="coupon")
        # Sent only now: a later time on the partition must not close k1's run
        # before k1b arrived. c2's booking comes from an event after w2b, so
        # once it is out, c2's coupon was decided.
        await send_all(producer, namespace, [event("w2c", "w2", now - 60, vibration=0.9)])
        await actions.first(lambda a: a["device_id"] == "w2", what="booking for w2")

    fired = await read_all_actions(namespace)
    # Versions as shipped: the actions must carry what the rule files say.
    version = {rule.id: rule.version for rule in load_ruleset(REPO / "rules").rules}
    assert sorted(summary(a) for a in fired) == sorted(
        [
            ("coupon-detergent-low", version["coupon-detergent-low"], "w1", ["w1b"]),
            ("maintenance-vibration", version["maintenance-vibration"], "k1", ["k1a", "k1b"]),
            ("maintenance-vibration", version["maintenance-vibration"], "w2", ["w2a"]),
            ("support-error-burst", version["support-error-burst"], "v1", ["v1a", "v1b", "v1c"]),
            (
                "support-error-then-reboot",
                version["support-error-then-reboot"],
                "v1",
                ["v1a", "v1r"],
            ),
        ]
    ), "exactly these firings: no coupon for c2"
    by_id = {(a["rule"]["id"], a["device_id"]): a for a in fired}
    for (rule_id, device), action in by_id.items():
        assert_identity(action, rule_id, version[rule_id], device)

    coupon = by_id["coupon-detergent-low", "w1"]
    assert coupon["customer_id"] == "c1" and coupon["type"] == "coupon"
    assert coupon["at"] == pytest.approx(now - 500)
    assert coupon["payload"]["discount_pct"] == 20, "c1 is a gold customer"
    assert coupon["payload"]["message"] == (
        "Your washer's detergent is at 12%: refill with 20% off"
    )
    booking = by_id["maintenance-vibration", "k1"]
    assert booking["type"] == "maintenance_booking"
    assert booking["at"] == pytest.approx(now - 100), "ten minutes after the run began"
    assert booking["payload"]["device_type"] == "compressor"
    assert booking["payload"]["urgency"] == "normal"
    assert by_id["maintenance-vibration", "w2"]["customer_id"] == "c2"
    burst = by_id["support-error-burst", "v1"]
    assert burst["payload"]["reason"] == "3 errors in 10 min"
    assert burst["payload"]["severity"] == "high", "two distinct codes"
    reboot = by_id["support-error-then-reboot", "v1"]
    assert reboot["payload"]["error_code"] == "E17"
    assert reboot["payload"]["seconds_to_reboot"] == 60
    suppressed = _actor(worker)["suppressed"]
    assert suppressed.get("consent:marketing", 0) >= 1, "c2's coupon was suppressed, not lost"

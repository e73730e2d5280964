"""The benchmark's peer: the engine's work as a Quix Streams application, one process.

What a careful team would write with Quix Streams and no rule engine:

- **ingest** (one dataframe per device topic: Quix subscribes to named topics
  only, so the device topics are listed once at start-up): the same
  ``engine.quality.Inspector`` (msgspec decoding, validation, unit
  normalisation, registry enrichment), accepted events re-keyed by customer
  to ``--events-topic``, rejected ones to ``--deadletter-topic``;
- **customer stage** (one dataframe over ``--events-topic``): per customer
  a state in Quix's state store (RocksDB with a changelog topic), the same
  stream hygiene (dedup, lateness), aggregates (``tables.state``) and models
  (``engine.models.ModelSet``, one per partition, holding the per-device
  anomaly models by device id, checkpointed at every commit),
  the shipped rules hand-coded (``loadtest.peer_rules``), and timers of idle
  customers advanced with their partition's time, as the worker does: from
  ingest's event-time watermark over the device topics (``engine.watermark``,
  carried in headers), so a backlog read unevenly does not make devices look
  silent; actions to ``--actions-topic``, late events to ``--late-topic``.

Decoded states are kept in memory between messages (Quix hands out bytes), and
written back to the state store on every message, as Quix's at-least-once
checkpoints require. The device registry and customer profiles are read in
full at start-up.

Run: ``python -m loadtest.peer_quix --bootstrap ... --device-topic-prefix b1.device. ...``
(see ``--help``); it keeps ``--status`` (JSON counters) up to date five times
a second and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from quixstreams import Application, State, message_context
from quixstreams.models import TopicConfig

from engine.actions import ACTION_SCHEMA_VERSION
from engine.config import load_settings
from engine.models import ModelSet, load_models
from engine.quality import (
    Accepted,
    CustomerProfiles,
    DeviceRegistry,
    Inspector,
    SourcePosition,
    StreamHygiene,
    deadletter_value,
)
from engine.watermark import PartitionClock, SourceWatermarks, sent_header, time_headers
from loadtest.peer_rules import HandRules
from tables.state import (
    CustomerState,
    DeviceState,
    apply_profile,
    customer_view,
    decode_state,
    device_view,
    encode_state,
    new_customer_state,
    note_action,
    record_event,
)

#: As the worker: the models are checkpointed with the state, at every commit.
MODEL_CHECKPOINT_S = 1.0
#: As the worker's ingest: how often the watermark over the device topics is recomputed.
WATERMARK_INTERVAL_S = 0.05
WATERMARK_HEADER = "peer-wm"
SOURCE_HEADER = "peer-src"
SENT_HEADER = "peer-sent"
_STATE_KEY = "s"
_MODELS_PREFIX = "\x00models"


def read_compacted(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[tuple[Any, Any]]:
    """Every (key, value) of a topic, from the beginning to its current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"peer-reader-{os.getpid()}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            for p in partitions
        }
        wanted = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in wanted])
        records: list[tuple[Any, Any]] = []
        positions = {p: ends[p][0] for p in wanted}
        deadline = time.monotonic() + timeout_s
        while any(positions[p] < wanted[p] for p in wanted):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                positions[message.partition()] = message.offset() + 1
                records.append((message.key(), message.value()))
        return records
    finally:
        consumer.close()


@dataclass
class PeerCounters:
    consumed: int = 0
    accepted: int = 0
    deadlettered: int = 0
    processed: int = 0
    duplicates: int = 0
    late: int = 0
    actions: int = 0
    timer_firings: int = 0
    watermark: float | None = None
    lagging_sources: int = 0
    #: device partitions this process read, at its last watermark update
    assigned_sources: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"pid": os.getpid(), **vars(self)}


@dataclass
class PartitionWork:
    """One partition of the customer stage: its models, time and timers."""

    models: ModelSet
    #: The partition's time for idle customers, from ingest's watermarks.
    clock: PartitionClock = field(default_factory=PartitionClock)
    #: customer_id -> earliest pending timer; ``heap`` holds (due, customer_id),
    #: entries that no longer match ``due`` are skipped when popped.
    due: dict[str, float] = field(default_factory=dict)
    heap: list[tuple[float, str]] = field(default_factory=list)
    checkpointed_at: float = field(default_factory=time.monotonic)


class PeerLogic:
    """The code inside the Quix dataframes (plain methods, testable alone)."""

    def __init__(self, options: argparse.Namespace) -> None:
        settings = load_settings()
        self.options = options
        self.registry = DeviceRegistry(options.registry_topic)
        for key, value in read_compacted(options.bootstrap, options.registry_topic):
            self.registry.apply(key, value)
        self.profiles = CustomerProfiles(options.customers_topic)
        for key, value in read_compacted(options.bootstrap, options.customers_topic):
            self.profiles.apply(key, value)
        self.inspector = Inspector(
            settings.quality, self.registry, device_topic_prefix=options.device_topic_prefix
        )
        self.device_skew_s = settings.quality.device_skew_s
        self.hygiene = StreamHygiene(settings.quality)
        self.rules = HandRules()
        self.models_path = options.models
        self.partitions: dict[int, PartitionWork] = {}
        self.states: dict[str, CustomerState] = {}
        self.counters = PeerCounters()
        # Ingest's event-time watermark over the device topics (engine.watermark, as
        # the worker's ingest keeps it): set ``consumer`` before the app runs.
        self.consumer: Any = None
        self.marks = SourceWatermarks()
        self._watermark_at = 0.0
        self._source = f"peer-{os.getpid()}".encode()

    # ingest -----------------------------------------------------------------------------
    def inspect(self, raw: bytes) -> dict[str, Any] | bytes:
        """A normalised event (dict) or a dead-letter envelope (bytes)."""
        context = message_context()
        source = SourcePosition(context.topic, context.partition, context.offset)
        counters = self.counters
        now = time.time()
        if counters.first_at is None:
            counters.first_at = now
        counters.consumed += 1
        verdict = self.inspector.inspect(raw, source)
        self._update_watermark()
        if isinstance(verdict, Accepted):
            counters.accepted += 1
            self.marks.observe((context.topic, context.partition), verdict.event["ts"])
            return verdict.event
        counters.deadlettered += 1
        counters.last_at = now
        return deadletter_value(raw, verdict, source, now)

    def _update_watermark(self) -> None:
        """Which device partitions still have unread records hold the watermark back."""
        now = time.monotonic()
        if self.consumer is None or now - self._watermark_at < WATERMARK_INTERVAL_S:
            return
        self._watermark_at = now
        prefix = self.options.device_topic_prefix
        sources = [tp for tp in self.consumer.assignment() if tp.topic.startswith(prefix)]
        self.counters.assigned_sources = len(sources)
        if not sources:
            return
        # End offsets of every source in one ListOffsets request (offset -1: the end),
        # as the worker's ingest asks for them; cached high watermarks only know
        # partitions fetched from since the start.
        ends = {
            (tp.topic, tp.partition): tp.offset
            for tp in self.consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, -1) for tp in sources], timeout=10
            )
        }
        lagging = []
        for tp in self.consumer.position(sources):
            end = ends.get((tp.topic, tp.partition), -1)
            if tp.offset < 0:  # nothing consumed yet: lagging if there is anything at all
                low, _high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = max(low, 0)
            else:
                position = tp.offset
            if position < end:
                lagging.append((tp.topic, tp.partition))
        self.counters.watermark = self.marks.advance(lagging)
        self.counters.lagging_sources = len(lagging)

    def time_headers(self, value: Any, key: Any, timestamp: int, headers: Any) -> list[Any]:
        """The headers of a forwarded event: this ingest's id and its watermark."""
        # Before every lagging source was read once, no time is certain: 0, not the
        # event's own time (this consumer reads topic after topic, so one device
        # can be a day of event time ahead of another that has not been read yet).
        # Less the devices' skew, as the worker's ingest stamps it.
        mark = self.marks.current - self.device_skew_s if self.marks.current is not None else 0.0
        return [
            (SOURCE_HEADER, self._source),
            (WATERMARK_HEADER, repr(mark).encode()),
            sent_header(SENT_HEADER),
        ]

    # customer stage ---------------------------------------------------------------------
    def _work(self, partition: int, state: State) -> PartitionWork:
        work = self.partitions.get(partition)
        if work is None:
            models = load_models(self.models_path)
            blob = state._transaction.as_state(prefix=_MODELS_PREFIX).get_bytes(f"p{partition}")
            if blob is not None:
                models.restore(blob)
            work = self.partitions[partition] = PartitionWork(models)
        return work

    def _state(self, customer_id: str, state: State) -> CustomerState:
        cached = self.states.get(customer_id)
        if cached is not None:
            return cached
        blob = state.get_bytes(_STATE_KEY)
        if blob is not None:
            loaded = decode_state(blob)
        else:
            loaded = new_customer_state(customer_id)
            apply_profile(loaded, self.profiles.lookup(customer_id))
            loaded.rules = self.rules.new_state()
        self.states[customer_id] = loaded
        return loaded

    def process(
        self, event: dict[str, Any], key: Any, timestamp: int, headers: Any, state: State
    ) -> list[dict[str, Any]]:
        """One customer's event, then the due timers of its partition; returns
        actions and late-event envelopes (``reason_code: late``)."""
        customer_id = key.decode() if isinstance(key, bytes) else key
        partition = message_context().partition
        work = self._work(partition, state)
        customer_state = self._state(customer_id, state)
        emitted_at = time.time()
        out: list[dict[str, Any]] = []
        counters = self.counters
        device_state = customer_state.devices.get(event["device_id"])
        if device_state is None:
            device_state = customer_state.devices[event["device_id"]] = DeviceState()
        verdict = self.hygiene.admit(device_state, event)
        if verdict == "duplicate":
            counters.duplicates += 1
        elif verdict == "late":
            counters.late += 1
            rejection = self.hygiene.late_rejection(device_state, event)
            out.append(
                {
                    "reason": rejection.reason,
                    "reason_code": "late",
                    "event": event,
                    "received_at": emitted_at,
                }
            )
        else:
            record_event(customer_state, device_state, event)
            customer = customer_view(customer_state, event["ts"])
            device = device_view(device_state)
            scores = work.models.process(event, customer=customer, device=device)
            firings = self.rules.process(customer_state.rules, event, customer, device, scores)
            self._emit(customer_state, firings, emitted_at, out)
        state.set_bytes(_STATE_KEY, encode_state(customer_state))
        self._index(work, customer_id, customer_state)
        source, watermark, sent_at = time_headers(
            headers, SOURCE_HEADER, WATERMARK_HEADER, SENT_HEADER
        )
        work.clock.heard(source, event["ts"] if watermark is None else watermark, sent_at)
        self._advance(work, state, emitted_at, out)
        self._checkpoint(work, partition, state)
        counters.processed += 1
        counters.last_at = time.time()
        return out

    def _emit(
        self,
        customer_state: CustomerState,
        firings: list[dict[str, Any]],
        emitted_at: float,
        out: list[dict[str, Any]],
    ) -> None:
        for firing in firings:
            action = {
                "schema_version": ACTION_SCHEMA_VERSION,
                "action_id": firing["action_id"],
                "type": firing["type"],
                "customer_id": customer_state.customer_id,
                "device_id": firing["device_id"],
                "rule": {"id": firing["rule"], "version": firing["version"]},
                "at": firing["at"],
                "emitted_at": emitted_at,
                "payload": firing["payload"],
                "evidence": firing["evidence"],
            }
            note_action(customer_state, action)
            out.append(action)
        self.counters.actions += len(firings)

    def _index(self, work: PartitionWork, customer_id: str, customer_state: CustomerState) -> None:
        next_due = self.rules.next_due(customer_state.rules)
        if next_due == work.due.get(customer_id):
            return
        if next_due is None:
            work.due.pop(customer_id, None)
        else:
            work.due[customer_id] = next_due
            heapq.heappush(work.heap, (next_due, customer_id))

    def _advance(
        self, work: PartitionWork, state: State, emitted_at: float, out: list[dict[str, Any]]
    ) -> None:
        """Fire the timers of every customer of the partition due by its time."""
        now = work.clock.now()
        heap = work.heap
        transaction = state._transaction  # other customers' state, same partition
        while heap and now is not None and heap[0][0] <= now:
            due, customer_id = heapq.heappop(heap)
            if work.due.get(customer_id) != due:
                continue  # superseded
            del work.due[customer_id]
            other = transaction.as_state(prefix=customer_id)
            customer_state = self._state(customer_id, other)
            firings = self.rules.advance(
                customer_state.rules, now, customer_view(customer_state, now)
            )
            self.counters.timer_firings += len(firings)
            self._emit(customer_state, firings, emitted_at, out)
            other.set_bytes(_STATE_KEY, encode_state(customer_state))
            self._index(work, customer_id, customer_state)

    def _checkpoint(self, work: PartitionWork, partition: int, state: State) -> None:
        now = time.monotonic()
        if now - work.checkpointed_at < MODEL_CHECKPOINT_S:
            return
        models_state = state._transaction.as_state(prefix=_MODELS_PREFIX)
        models_state.set_bytes(f"p{partition}", work.models.snapshot())
        work.checkpointed_at = now


def build_app(options: argparse.Namespace, logic: PeerLogic) -> Application:
    app = Application(
        broker_address=options.bootstrap,
        consumer_group=options.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=options.state_dir,
        loglevel="WARNING",
        processing_guarantee="at-least-once",
        consumer_extra_config={"fetch.wait.max.ms": 20},
        producer_extra_config={"linger.ms": 5, "enable.idempotence": True},
    )
    events_topic = app.topic(
        options.events_topic,
        key_serializer="str",
        key_deserializer="str",
        value_serializer="json",
        value_deserializer="json",
        config=TopicConfig(num_partitions=options.partitions, replication_factor=1),
    )
    deadletters = app.topic(options.deadletter_topic, value_serializer="bytes")
    actions = app.topic(options.actions_topic, key_serializer="str", value_serializer="json")
    late = app.topic(options.late_topic, key_serializer="str", value_serializer="json")

    pattern = re.compile(re.escape(options.device_topic_prefix) + ".+")
    admin = AdminClient({"bootstrap.servers": options.bootstrap})
    device_topics = sorted(t for t in admin.list_topics(timeout=30).topics if pattern.fullmatch(t))
    for name in device_topics:
        verdicts = app.dataframe(
            app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        ).apply(logic.inspect)
        verdicts.filter(lambda v: type(v) is dict).set_headers(logic.time_headers).to_topic(
            events_topic, key=lambda event: event["customer_id"]
        )
        verdicts.filter(lambda v: type(v) is bytes).to_topic(deadletters)

    outputs = app.dataframe(events_topic).apply(
        logic.process, stateful=True, expand=True, metadata=True
    )
    outputs.filter(lambda v: "action_id" in v).to_topic(
        actions, key=lambda action: action["customer_id"]
    )
    outputs.filter(lambda v: v.get("reason_code") == "late").to_topic(
        late, key=lambda envelope: envelope["event"]["device_id"]
    )
    logic.consumer = app._consumer  # the device partitions' positions, for the watermark
    return app


def _keep_status(logic: PeerLogic, path: Path, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        _write_status(logic, path)


def _write_status(logic: PeerLogic, path: Path) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps(logic.counters.as_dict()))
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--device-topic-prefix", required=True)
    parser.add_argument("--registry-topic", required=True)
    parser.add_argument("--customers-topic", required=True)
    parser.add_argument("--events-topic", required=True)
    parser.add_argument("--deadletter-topic", required=True)
    parser.add_argument("--late-topic", required=True)
    parser.add_argument("--actions-topic", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--models", default="models/models.yaml")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--status", required=True)
    options = parser.parse_args()
    logic = PeerLogic(options)
    status = Path(options.status)
    stop = threading.Event()
    reporter = threading.Thread(target=_keep_status, args=(logic, status, stop), daemon=True)
    reporter.start()
    try:
        build_app(options, logic).run()
    finally:
        stop.set()
        _write_status(logic, status)


if __name__ == "__main__":
    main()

"""The worker's Faust tables (RocksDB store, changelog-backed).

All are keyed so that they are co-partitioned with the customer-keyed stream
(the actor writes every key with one of that customer's records as the
current event):

- ``customers``: customer_id -> msgpack ``CustomerState`` (``tables.state``, a
  msgspec Struct stored as a map keyed by field name): profile, consent,
  devices and their health, usage aggregates, rule state;
- ``timers``: customer_id -> JSON ``[partition, next due time]``, so a worker
  that takes over a partition knows which idle customers have timers;
- ``model-checkpoints``: ``p<partition>`` -> the models' snapshot of that
  partition (``engine.models.ModelSet.snapshot``), and ``clock-p<partition>``
  -> JSON, the partition's time for its idle keys at its last checkpoints,
  each with the stream offset it was taken at
  (``engine.watermark.ClockCheckpoints``): a replay starts from the time of
  the checkpoint at or before its committed offset.

Windowed aggregates (usage per hour and per day, device readings over a
rule's window) live in the customer's state, written with it once per
checkpoint: a windowed Faust table beside it would write every changed
window again, to a changelog of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TableT

from engine.config import Settings


@dataclass(frozen=True)
class Tables:
    customers: TableT
    timers: TableT
    model_checkpoints: TableT


def define_tables(app: faust.App, settings: Settings) -> Tables:
    partitions = settings.kafka.partitions

    def table(name: str, help_text: str) -> TableT:
        return app.Table(
            name,
            default=None,
            partitions=partitions,
            key_type=str,
            value_type=bytes,
            help=help_text,
        )

    return Tables(
        customers=table("customers", "per-customer actor state"),
        timers=table("timers", "next timer per customer"),
        model_checkpoints=table("model-checkpoints", "model snapshots per partition"),
    )

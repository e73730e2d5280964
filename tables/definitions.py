"""The worker's Faust tables (RocksDB store, changelog-backed).

All are keyed so that they are co-partitioned with the customer-keyed stream
(the actor writes every key with one of that customer's records as the
current event):

- ``customers``: customer_id -> msgpack ``CustomerState`` (``tables.state``):
  profile, consent, devices and their health, usage aggregates, rule state;
- ``timers``: customer_id -> JSON ``[partition, next due time]``, so a worker
  that takes over a partition knows which idle customers have timers;
- ``model-checkpoints``: ``p<partition>`` -> the models' snapshot of that
  partition (``engine.models.ModelSet.snapshot``);
- ``usage-hourly`` / ``usage-daily``: windowed (tumbling, event time) minutes
  of use per customer, expiring after 2 and 35 days of stream time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import faust

from engine.config import Settings
from engine.durations import DAY_S, HOUR_S


@dataclass(frozen=True)
class Tables:
    customers: faust.Table
    timers: faust.Table
    model_checkpoints: faust.Table
    usage_hourly: faust.Table
    usage_daily: faust.Table


def define_tables(app: faust.App, settings: Settings) -> Tables:
    partitions = settings.kafka.partitions

    def table(name: str, help_text: str) -> faust.Table:
        return app.Table(
            name,
            default=None,
            partitions=partitions,
            key_type=str,
            value_type=bytes,
            help=help_text,
        )

    def usage(name: str, size_s: float, keep: timedelta) -> faust.Table:
        return app.Table(
            name,
            default=float,
            partitions=partitions,
            key_type=str,
            value_type=float,
            help="minutes of use per customer",
        ).tumbling(size_s, expires=keep)

    return Tables(
        customers=table("customers", "per-customer actor state"),
        timers=table("timers", "next timer per customer"),
        model_checkpoints=table("model-checkpoints", "model snapshots per partition"),
        usage_hourly=usage("usage-hourly", HOUR_S, timedelta(days=2)),
        usage_daily=usage("usage-daily", DAY_S, timedelta(days=35)),
    )


def recent_usage(table: faust.Table, key: str, now: float, size_s: float, count: int) -> list:
    """The last ``count`` windows up to ``now``: ``[{"start", "minutes"}]``, oldest first."""
    first = now // size_s * size_s - (count - 1) * size_s
    # Sums are added per batch, so the last bits depend on where batches were cut.
    return [
        {"start": start, "minutes": round(table.relative_to(start)[key].value(), 6)}
        for start in (first + i * size_s for i in range(count))
    ]

"""The worker's counters in the Prometheus text format (``GET /metrics``).

One source of truth: the collector reads the same figures as ``/metrics.json``
(``Runtime.metrics()``) at each scrape, so nothing is counted twice. Names
follow Prometheus conventions: ``iotcrm_<stage>_<what>_total`` for counters,
base units (seconds) for gauges, histograms for latencies (``Latencies``).

>>> figures = {"actor": {"events": 7, "in_flight": 2}, "actions_by_type": {"coupon": 1},
...            "event_loop": {"recent_max_s": 0.01, "stalls": 0}}
>>> text = exposition(lambda: figures).decode()
>>> "iotcrm_actor_events_total 7.0" in text, 'iotcrm_actions_total{type="coupon"} 1.0' in text
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

#: The text format's content type, for the web view.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: section of ``Runtime.metrics()`` -> key -> help; the counter is
#: ``iotcrm_<section>_<key>_total``.
COUNTERS: dict[str, dict[str, str]] = {
    "ingest": {
        "consumed": "Device records ingest read.",
        "accepted": "Events ingest forwarded to the actors.",
        "deadlettered": "Records sent to the dead-letter topic.",
        "records_sent": "Packed records of the customer stream.",
        "commit_failures": "Ingest commits refused (the records come again).",
        "rebalances": "Times ingest's device partitions were taken away or lost.",
        "send_retries": "Ingest produce attempts retried.",
        "behind_watermark": (
            "Events read after ingest had stamped a later time (devices out of order "
            "by more than quality.device_skew_s: idle keys' timers may have fired early)."
        ),
        "restarts": "Times the worker restarted its ingest process.",
    },
    "actor": {
        "events": "Events processed and checkpointed.",
        "duplicates": "Duplicate events dropped (checkpointed).",
        "late": "Late events set aside (checkpointed).",
        "actions": "Actions the actor sent.",
        "batches": "Batches the actor processed.",
        "checkpoints": "Checkpoints completed.",
        "timer_firings": "Actions that timers fired.",
        "offset_gaps": "Customer-stream records repaired after a hole.",
        "erasures": "Customers erased (GDPR) by the actor.",
        "erased_events_dropped": "Events of erased customers dropped.",
        "rebalances": "Times the actor's partitions were taken away (a rebalance).",
        "commit_failures": "Actor commits refused or unanswered (committed later).",
    },
    "sink": {
        "written": "Actions written to Cassandra.",
        "retries": "Cassandra writes retried.",
        "rejected": "Records the sink could never store.",
        "commit_failures": "Sink commits refused (the records come again).",
        "restarts": "Times the worker restarted its sink process.",
        "erasures": "Customers whose Cassandra rows an erasure deleted.",
    },
    "event_loop": {
        "stalls": "Event-loop wake-ups more than 0.5 s late.",
        "busy_stalls": "Stalls the loop's thread spent running (work that did not yield).",
    },
}

#: (section, key) -> (gauge name, help)
GAUGES: dict[tuple[str, str], tuple[str, str]] = {
    ("actor", "in_flight"): ("iotcrm_actor_in_flight", "Processed, not yet checkpointed."),
    ("actor", "cached_states"): ("iotcrm_actor_cached_states", "Decoded states in memory."),
    ("sink", "lag"): ("iotcrm_sink_lag", "Records the sink has yet to write."),
    ("ingest", "watermark"): ("iotcrm_ingest_watermark_seconds", "Ingest's event-time watermark."),
    ("ingest", "watermark_interval_s"): (
        "iotcrm_ingest_watermark_interval_seconds",
        "Seconds between ingest's checks of its sources' ends (spaced out by their cost).",
    ),
    ("ingest", "assigned_sources"): (
        "iotcrm_ingest_assigned_sources",
        "Device partitions this replica's ingest reads.",
    ),
    ("ingest", "handed_over"): (
        "iotcrm_ingest_handed_over_sources",
        "Device partitions given up in a rebalance that still hold ingest's time back.",
    ),
    ("event_loop", "recent_max_s"): (
        "iotcrm_event_loop_lag_seconds",
        "Largest event-loop lag over the last 10 s.",
    ),
    ("event_loop", "max_s"): ("iotcrm_event_loop_lag_max_seconds", "Largest event-loop lag."),
}


#: Bucket bounds (seconds) of the latency histograms, around the 250 ms target.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


#: The stages of ``Latencies.stage``, in the order an event goes through them.
STAGES = ("ingest", "transit", "actor")
#: The steps of a checkpoint that hold the actor's stream (``Latencies.checkpoint``).
CHECKPOINT_STEPS = ("acknowledge", "write")


class Latencies:
    """The worker's latency histograms, observed by the customer actor.

    Both start when the device record was published (its Kafka timestamp, as
    ingest passes it on): ``event`` ends when the actor batch that processed
    the event sent its actions, per customer-stream record (by its oldest
    event); ``action`` ends when an action an event triggered was sent (by the
    record that carried the last event of its evidence). Actions that time
    passing fired (silences, absences) have no such start and are not counted.

    >>> latencies = Latencies()
    >>> latencies.event.observe(0.03); latencies.event.observe(0.4)
    >>> latencies.as_dict()["event"]
    {'count': 2, 'sum_s': 0.43, 'le': {'0.05': 1, '0.5': 2}}
    """

    def __init__(self) -> None:
        self.event = Histogram(
            "iotcrm_event_latency_seconds",
            "From a device record's publication to the end of the actor batch that processed it.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.action = Histogram(
            "iotcrm_action_latency_seconds",
            "From the publication of the device record that triggered an action to the "
            "action being sent.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.stage = Histogram(
            "iotcrm_stage_latency_seconds",
            "The event latency by stage: ingest, transit (broker, fetch, buffers), actor.",
            labelnames=["stage"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.checkpoint = Histogram(
            "iotcrm_actor_checkpoint_seconds",
            "How long a checkpoint held the actor's stream, by step: acknowledge, write.",
            labelnames=["step"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Count, sum and the cumulative counts of the buckets that changed, per histogram
        (``stages``: per stage; ``checkpoint``: per step)."""
        return {
            "event": _histogram_dict(self.event),
            "action": _histogram_dict(self.action),
            "stages": {stage: _histogram_dict(self.stage.labels(stage)) for stage in STAGES},
            "checkpoint": {
                step: _histogram_dict(self.checkpoint.labels(step)) for step in CHECKPOINT_STEPS
            },
        }


def _histogram_dict(histogram: Histogram) -> dict[str, Any]:
    count, total, buckets, previous = 0, 0.0, {}, 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = int(sample.value)
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":
                if sample.value != previous:
                    buckets[sample.labels["le"]] = int(sample.value)
                previous = sample.value
    return {"count": count, "sum_s": round(total, 6), "le": buckets}


class WorkerCollector(Collector):
    """Prometheus families from a ``Runtime.metrics()``-shaped dict, read per scrape."""

    def __init__(self, figures: Callable[[], dict[str, Any]]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        for section, counters in COUNTERS.items():
            for key, help_text in counters.items():
                value = _number((figures.get(section) or {}).get(key))
                if value is not None:
                    yield CounterMetricFamily(f"iotcrm_{section}_{key}", help_text, value=value)
        for (section, key), (name, help_text) in GAUGES.items():
            value = _number((figures.get(section) or {}).get(key))
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
        lag = GaugeMetricFamily(
            "iotcrm_consumer_lag_records",
            "Records not yet processed, by stage (ingest: device records; actor: "
            "customer-stream records of up to 64 events).",
            labels=["stage"],
        )
        for stage in ("ingest", "actor"):
            value = _number((figures.get(stage) or {}).get("lag"))
            if value is not None:
                lag.add_metric([stage], value)
        yield lag
        actions = CounterMetricFamily("iotcrm_actions", "Actions sent, by type.", labels=["type"])
        for action_type, count in sorted((figures.get("actions_by_type") or {}).items()):
            actions.add_metric([action_type], count)
        yield actions
        suppressed = CounterMetricFamily(
            "iotcrm_actor_suppressed", "Firings suppressed, by reason.", labels=["reason"]
        )
        for reason, count in sorted(((figures.get("actor") or {}).get("suppressed") or {}).items()):
            suppressed.add_metric([reason], count)
        yield suppressed


def exposition(figures: Callable[[], dict[str, Any]], latencies: Latencies | None = None) -> bytes:
    """The text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(figures))
    if latencies is not None:
        registry.register(latencies.event)
        registry.register(latencies.action)
        registry.register(latencies.stage)
        registry.register(latencies.checkpoint)
    return generate_latest(registry)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None

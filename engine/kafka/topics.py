"""The topics iotcrm reads and writes, and their idempotent creation.

Co-partitioning matters: the customer actor consumes the customer-keyed event
stream, ``crm.customers``, ``crm.outcomes`` and the erasure requests together, so all must
have ``kafka.partitions`` partitions and be keyed by customer_id. ``ensure_topics``
refuses to run against topics that exist with another partition count.

The worker's table changelogs are declared here too, before Faust starts: a
topic Faust creates itself right before it subscribes can be missing from the
broker's metadata at the group's first assignment. Its partitions are then
left unassigned and every write to that table fails (``PartitionsMismatch``)
until the consumer next refreshes its metadata, minutes later.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from engine.config import ACTION_TOPIC_SUFFIX, Settings
from engine.kafka.clients import client_options


class TopicLayoutError(RuntimeError):
    """An existing topic does not have the partitions the engine relies on."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    #: True when the engine relies on the partition count (co-partitioned topics).
    strict: bool = False


#: The worker's Faust tables, each backed by a compacted changelog topic
#: co-partitioned with the customer-keyed stream (see tables/definitions.py).
TABLE_NAMES = ("customers", "timers", "model-checkpoints")


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic Faust names for ``table`` (``<app id>-<table>-changelog``)."""
    return f"{settings.worker.app_id}-{table}-changelog"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    k = settings.kafka
    compacted = {"cleanup.policy": "compact"}
    return [
        *(
            TopicSpec(changelog_topic(settings, table), k.partitions, compacted, strict=True)
            for table in TABLE_NAMES
        ),
        TopicSpec(k.registry_topic, k.partitions, compacted),
        TopicSpec(k.customers_topic, k.partitions, compacted, strict=True),
        TopicSpec(k.customer_events_topic, k.partitions, strict=True),
        TopicSpec(k.outcomes_topic, k.partitions, strict=True),
        TopicSpec(k.erasure_topic, k.partitions, strict=True),
        TopicSpec(k.telemetry_topic, k.partitions),
        TopicSpec(k.customer360_topic, k.partitions, compacted),
        TopicSpec(k.deadletter_topic, 1),
        TopicSpec(k.late_topic, 1),
        *(
            TopicSpec(settings.action_topic(action_type), k.partitions)
            for action_type in ACTION_TOPIC_SUFFIX
        ),
    ]


def action_topics(settings: Settings) -> list[str]:
    return [settings.action_topic(action_type) for action_type in ACTION_TOPIC_SUFFIX]


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics; return the names created. Safe to run often."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10000)
    await admin.start()
    try:
        specs = topic_specs(settings)
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            # Another worker may create them concurrently.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            s.name,
                            num_partitions=s.partitions,
                            replication_factor=settings.kafka.replication_factor,
                            topic_configs=s.config,
                        )
                        for s in missing
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
        await _check_partitions(admin, [s for s in specs if s.strict], timeout_s)
        return [s.name for s in missing]
    finally:
        await admin.close()


async def _check_partitions(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout_s: float
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics([s.name for s in specs])
        counts = {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
        if len(counts) == len(specs):
            break
        if asyncio.get_running_loop().time() > deadline:
            raise TopicLayoutError(f"topics not visible after creation: {sorted(counts)}")
        await asyncio.sleep(0.2)  # metadata of new topics propagates asynchronously
    wrong = [f"{s.name} has {counts[s.name]}" for s in specs if counts[s.name] != s.partitions]
    if wrong:
        raise TopicLayoutError(
            "co-partitioned topics must each have kafka.partitions="
            f"{specs[0].partitions} partitions: " + "; ".join(wrong)
        )

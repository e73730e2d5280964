"""The topic layout ``ensure_topics`` creates before a worker starts holds every
changelog topic Faust's tables use, with the partitions and cleanup policy
Faust expects: a changelog Faust has to create itself right before it
subscribes can miss the group's first assignment (see engine/kafka/topics.py)."""

from __future__ import annotations

import faust

from engine.config import load_settings
from engine.kafka import topic_specs
from tables.definitions import define_tables


def test_every_table_changelog_is_declared_co_partitioned_and_compacted() -> None:
    settings = load_settings(None)
    app = faust.App(settings.worker.app_id, broker="kafka://127.0.0.1:1")
    tables = define_tables(app, settings)
    specs = {spec.name: spec for spec in topic_specs(settings)}
    changelogs = [
        tables.customers.changelog_topic,
        tables.timers.changelog_topic,
        tables.model_checkpoints.changelog_topic,
    ]
    for changelog in changelogs:
        spec = specs[changelog.get_topic_name()]
        assert spec.partitions == settings.kafka.partitions == changelog.partitions
        assert spec.strict, "a changelog must keep the source topics' partitions"
        assert spec.config == {"cleanup.policy": "compact"}
        assert changelog.compacting and not changelog.deleting

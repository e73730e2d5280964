"""Kafka adapters: topic layout and creation, client options, small async helpers.

Everything that talks to a broker outside Faust goes through here.
"""

from engine.kafka.clients import behind, client_options, partition_for, partitions_of
from engine.kafka.topics import TopicSpec, ensure_topics, topic_specs

__all__ = [
    "TopicSpec",
    "behind",
    "client_options",
    "ensure_topics",
    "partition_for",
    "partitions_of",
    "topic_specs",
]

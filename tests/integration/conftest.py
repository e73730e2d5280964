"""Integration fixtures: the real local Kafka and Cassandra, real worker processes.

The servers are started by ``deploy/local/services.py`` (``make test`` does it).
If they do not answer, every integration test fails with that message: an
integration test is never skipped.

Each test gets its own namespace: topic names, consumer groups, Cassandra
keyspace, web port and state folder all carry a random id, so tests never
read each other's records and can run against long-lived servers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kit import CLEANER, REPO, Namespace, fresh_namespace

sys.path.insert(0, str(REPO / "deploy" / "local"))
import services

pytestmark = pytest.mark.integration

# As `services.py run` does for `make test`: pytest started on its own finds the login too.
for _name, _value in services.client_environment().items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session", autouse=True)
def servers_up() -> None:
    missing = [s.name for s in services.SERVICES.values() if not services.is_ready(s)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not answering: start them with "
            "`python3 deploy/local/services.py start` (make test does it)",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def drop_namespaces_at_the_end() -> Iterator[None]:
    """Wait for the background drops of every namespace the tests used."""
    yield
    CLEANER.close()


@pytest.fixture
async def namespace(tmp_path: Path) -> AsyncIterator[Namespace]:
    """A fresh namespace with its topics and keyspace created (``iotcrm setup``)."""
    async with fresh_namespace(tmp_path.name) as ns:
        yield ns


@pytest.fixture
async def reference(tmp_path: Path) -> AsyncIterator[Namespace]:
    """A second namespace in the same test: a run to compare with."""
    async with fresh_namespace(tmp_path.name, label="reference namespace") as ns:
        yield ns


@pytest.fixture
async def producer(namespace: Namespace) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=namespace.settings.kafka.bootstrap, acks="all", linger_ms=2
    )
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def hot_rules(tmp_path: Path) -> Path:
    """A rule folder holding only ``live_helpers.HOT_RULE`` (one action per hot reading)."""
    from tests.integration.live_helpers import hot_rules_in

    return hot_rules_in(tmp_path)

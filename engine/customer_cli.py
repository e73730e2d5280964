"""``iotcrm customer erase ID``: a GDPR erasure, end to end.

Publishes an erasure request (``engine.erasure``) keyed by the customer id to
``kafka.erasure_topic``, then, unless ``--no-wait``, waits for the audit
record the Cassandra sink writes once the customer's rows are deleted, and
prints it as JSON. Exit codes: 0 erased, 1 not confirmed within ``--timeout``
(the request stands and is carried out when the worker gets to it), 2 a bad
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from engine import cli_args
from engine.config import Settings
from engine.erasure import ErasureRequest, encode_request, new_request


def register(subparsers: argparse._SubParsersAction) -> None:
    customer = subparsers.add_parser("customer", help="act on one customer's data (GDPR)")
    commands = customer.add_subparsers(dest="customer_command", metavar="SUBCOMMAND",
                                       required=True)  # fmt: skip
    erase = commands.add_parser(
        "erase",
        help="erase a customer everywhere: actor state, changelogs, timers, pending "
        "predictions, Cassandra rows, customer 360; an audit record remains",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    erase.add_argument("customer_id", help="the customer to erase")
    erase.add_argument("--request-id", default=None,
                       help="id of the request (default: a new UUID); the same id twice is "
                       "one erasure in the audit")  # fmt: skip
    erase.add_argument("--no-wait", action="store_true",
                       help="publish the request, do not wait for the audit record")  # fmt: skip
    erase.add_argument("--timeout", type=cli_args.non_negative_number, default=120.0,
                       help="seconds to wait for the audit record (default 120)")  # fmt: skip
    erase.set_defaults(func=run_erase)


def run_erase(args: argparse.Namespace) -> int:
    settings = cli_args.settings(getattr(args, "config", ""), "iotcrm customer erase")
    if not args.customer_id:
        print("iotcrm customer erase: the customer id is empty", file=sys.stderr)
        return 2
    request = new_request(args.request_id)
    return asyncio.run(_erase(settings, args.customer_id, request, args.no_wait, args.timeout))


async def _erase(
    settings: Settings, customer_id: str, request: ErasureRequest, no_wait: bool, timeout: float
) -> int:
    await publish_request(settings, customer_id, request)
    print(f"erasure {request.request_id} requested", file=sys.stderr)
    if no_wait:
        print(json.dumps({"request_id": request.request_id, "status": "requested"}))
        return 0
    audit = await wait_for_audit(settings, request.request_id, timeout)
    if audit is None:
        print(
            f"iotcrm customer erase: no audit record for {request.request_id} within "
            f"{timeout:g} s; the request stands and is carried out when the workers get to it",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({"status": "erased", **audit}, default=str, sort_keys=True))
    return 0


async def publish_request(settings: Settings, customer_id: str, request: ErasureRequest) -> None:
    """The request, keyed by customer id (the Java client's partitioner, as
    the actor's other co-partitioned topics), acknowledged by all replicas."""
    from aiokafka import AIOKafkaProducer

    from engine.kafka import client_options

    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.kafka.erasure_topic, encode_request(request), key=customer_id.encode()
        )
    finally:
        await producer.stop()


async def wait_for_audit(
    settings: Settings, request_id: str, timeout: float
) -> dict[str, Any] | None:
    from engine.store.cassandra import CassandraStore

    store = CassandraStore(settings)
    await store.connect()
    try:
        deadline = time.monotonic() + timeout
        while True:
            audit = await store.read_erasure(request_id)
            if audit is not None or time.monotonic() >= deadline:
                return audit
            await asyncio.sleep(0.5)
    finally:
        await store.close()

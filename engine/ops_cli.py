"""Operator commands: ``setup``, ``worker``, ``ingest``, ``sink``, ``mqtt-bridge``, ``state``.

``demo``, like ``simulate`` and ``bench``, comes with the load tests (``loadtest.cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engine import cli_args
from engine.config import ConfigError, Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    setup = subparsers.add_parser(
        "setup", help="create the Kafka topics and migrate the Cassandra schema (idempotent)"
    )
    setup.set_defaults(func=run_setup)

    worker = subparsers.add_parser(
        "worker", help="run a worker replica (ingest, customer actors, Cassandra sink, web)"
    )
    worker.add_argument(
        "--loglevel", default="info", help="debug, info, warning or error (default info)"
    )
    worker.add_argument(
        "--no-setup", action="store_true", help="do not create topics or migrate the schema first"
    )
    worker.set_defaults(func=run_worker)

    for role, what in (
        ("ingest", "the ingest stage alone: device topics -> validated, customer-keyed events"),
        ("sink", "the Cassandra sink alone: action topics, registry, customer 360 -> Cassandra"),
    ):
        stage = subparsers.add_parser(
            role, help=f'{what} (a worker runs it itself unless worker.{role} = "off")'
        )
        stage.add_argument("--loglevel", default="info", help="log level (default info)")
        stage.add_argument(
            "--status",
            type=Path,
            default=None,
            help="keep the stage's counters in this JSON file (replaced a few times a second)",
        )
        stage.set_defaults(func=run_stage_command, role=role)

    bridge = subparsers.add_parser(
        "mqtt-bridge",
        help="forward the devices' MQTT messages (mqtt.topic, QoS 1) to the ingest path, "
        "at least once",
    )
    bridge.add_argument("--loglevel", default="info", help="log level (default info)")
    bridge.set_defaults(func=run_mqtt_bridge_command)

    state = subparsers.add_parser("state", help="show live state")
    state_sub = state.add_subparsers(dest="what", metavar="WHAT", required=True)
    customer = state_sub.add_parser("customer", help="a customer's live state, as JSON")
    customer.add_argument("customer_id")
    customer.add_argument(
        "--url", default=None, help="worker web address (default http://127.0.0.1:<web_port>)"
    )
    customer.set_defaults(func=run_state_customer)


def _settings(args: argparse.Namespace) -> Settings:
    return cli_args.settings(args.config, "iotcrm")


async def setup(settings: Settings) -> dict[str, Any]:
    """Create missing topics and apply pending Cassandra migrations."""
    from engine.kafka import ensure_topics
    from engine.store.cassandra import build_cluster
    from engine.store.migrations import apply_migrations

    created = await ensure_topics(settings)

    def migrate() -> list[int]:
        cluster = build_cluster(settings)
        try:
            session = cluster.connect()
            return apply_migrations(
                session, settings.cassandra.keyspace, settings.cassandra.replication_factor
            )
        finally:
            cluster.shutdown()

    applied = await asyncio.to_thread(migrate)
    return {"topics_created": created, "migrations_applied": applied}


def run_setup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    result = asyncio.run(setup(settings))
    print(json.dumps(result))
    return 0


def _configure_logging(level: str) -> None:
    from engine.log_repeats import fold_repeats

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # A broker away makes the Kafka clients log each retry: one line per trouble.
    fold_repeats()


def run_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(args.loglevel)
    if not args.no_setup:
        asyncio.run(setup(settings))
    from engine.models import ModelConfigError
    from engine.rules import RuleFileError

    try:
        from agents.app import Runtime

        runtime = Runtime(settings)
    except RuleFileError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print("iotcrm worker: refusing to start with broken rules", file=sys.stderr)
        return 1
    except ModelConfigError as exc:
        print(f"iotcrm worker: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # e.g. pseudonyms asked for without their key
        print(f"iotcrm worker: {exc}", file=sys.stderr)
        return 2
    from faust.worker import Worker

    worker = Worker(runtime.app, loglevel=args.loglevel, quiet=True, override_logging=False)
    worker.execute_from_commandline()
    return 0


def run_stage_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(args.loglevel)
    from agents.services import run_ingest, run_sink

    if args.role == "ingest":
        run_ingest(settings, args.status)
    else:
        asyncio.run(run_sink(settings, args.status))
    return 0


def run_mqtt_bridge_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(args.loglevel)
    from agents.mqtt_bridge import run_mqtt_bridge

    run_mqtt_bridge(settings)
    return 0


def fetch_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def run_state_customer(args: argparse.Namespace) -> int:
    settings = _settings(args)
    base = args.url or f"http://127.0.0.1:{settings.worker.web_port}"
    try:
        status, body = fetch_json(f"{base}/customers/{args.customer_id}")
    except (urllib.error.URLError, OSError) as exc:
        print(f"iotcrm state: no worker answers at {base}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2, sort_keys=True))
    return 0 if status == 200 else 1

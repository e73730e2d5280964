"""The ``iotcrm`` command.

Each command group lives in its own module and contributes its subcommands
through a ``register(subparsers)`` function; the chosen subcommand's
``func(args) -> int`` runs and its return value is the exit code. Modules are
imported only to register, so a rule author's ``iotcrm rules ...`` never
imports Faust or Kafka.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "engine.ops_cli",  # worker, setup, demo, state
    "engine.customer_cli",  # customer erase
    "engine.rules.cli",  # rules validate|test|run
    "engine.models.cli",  # models backtest|status
    "loadtest.cli",  # simulate, bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotcrm",
        description="Turn IoT device telemetry into CRM actions, in real time.",
    )
    parser.add_argument(
        "--config",
        default="",
        help="configuration file (default: $IOTCRM_CONFIG or ./iotcrm.toml)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``iotcrm`` command.

Each command group lives in its own module and contributes its subcommands
through a ``register(subparsers)`` function; the chosen subcommand's
``func(args) -> int`` runs and its return value is the exit code. Modules are
imported only to register, so a rule author's ``iotcrm rules ...`` never
imports Faust or Kafka.

The runtime's own groups are listed here. Other installed distributions add
theirs through the entry-point group :data:`COMMAND_GROUP` (the load tests'
``simulate``, ``score``, ``demo``, ``bench`` and ``chaos`` come from
``loadtest``, which the runtime image does not contain): this module is the
one composition root, and it names no package above it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "engine.ops_cli",  # worker, ingest, sink, mqtt-bridge, setup, state
    "engine.customer_cli",  # customer erase
    "engine.rules.cli",  # rules validate|test|run
    "engine.models.cli",  # models backtest|status
)

#: Entry-point group of other distributions' command groups: each entry point
#: names a ``register(subparsers)`` function, e.g. ``loadtest.cli:register``.
COMMAND_GROUP = "iotcrm.commands"

Registrar = Callable[[argparse._SubParsersAction], None]


def installed_registrars() -> list[Registrar]:
    """The registrars of :data:`COMMAND_GROUP`, by entry-point name (a stable
    ``--help`` whatever order the distributions were installed in)."""
    found = sorted(entry_points(group=COMMAND_GROUP), key=lambda point: point.name)
    return [point.load() for point in found]


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
    for register in installed_registrars():
        register(subparsers)
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

"""``iotcrm``'s commands: the runtime's own, plus those other distributions
register through the ``iotcrm.commands`` entry points (the load tests'), so
the runtime image, which has no load tests, offers none of theirs."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine import cli

RUNTIME = {
    *("worker", "ingest", "sink", "mqtt-bridge", "setup", "state"),  # engine.ops_cli
    *("customer", "rules", "models"),
}
LOADTEST = {"simulate", "score", "demo", "bench", "chaos"}


def commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_the_load_tests_add_their_commands_by_entry_point() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "loadtest" / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"]
    assert declared == {cli.COMMAND_GROUP: {"loadtest": "loadtest.cli:register"}}
    assert commands(cli.build_parser()) == RUNTIME | LOADTEST


def test_without_the_load_tests_only_the_runtime_commands_are_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_entry_points(**selection: Any) -> list[Any]:
        assert selection == {"group": cli.COMMAND_GROUP}
        return []

    monkeypatch.setattr(cli, "entry_points", no_entry_points)
    assert commands(cli.build_parser()) == RUNTIME

"""The command line refuses impossible numbers before doing anything, and
every flag says what it is for."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from engine.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--customers", "-5"],
        ["simulate", "--devices-per-customer", "0"],
        ["simulate", "--rate", "-1"],
        ["simulate", "--rate", "nan"],
        ["demo", "--customers", "0"],
        ["demo", "--seconds", "-3"],
        ["bench", "--events", "-1"],
        ["bench", "--partitions", "0"],
        ["bench", "--replicas", "-2"],
        ["bench", "--latency-seconds", "inf"],
    ],
)
def test_impossible_numbers_are_refused(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f"argument {argv[1]}" in capsys.readouterr().err


def test_zero_stays_valid_where_it_means_none() -> None:
    args = build_parser().parse_args(["bench", "--replicas", "0", "--growth-factor", "0"])
    assert (args.replicas, args.growth_factor) == (0, 0)


def subcommands(parser: argparse.ArgumentParser, path: str = "iotcrm") -> list[tuple[str, Any]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += subcommands(sub, f"{path} {name}")
    return found


def test_every_flag_of_every_command_has_help() -> None:
    silent = [
        f"{command} {action.option_strings[0]}"
        for command, parser in subcommands(build_parser())
        for action in parser._actions
        if action.option_strings and not action.help and action.dest != "help"
    ]
    assert silent == [], f"flags without help: {silent}"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["demo"], "iotcrm demo:"),
        (["simulate"], "iotcrm simulate:"),
        (["customer", "erase", "c-1"], "iotcrm customer erase:"),
        (["setup"], "iotcrm:"),
    ],
)
def test_an_unusable_configuration_is_refused_by_the_command_that_read_it(
    argv: list[str], said: str, tmp_path: Any, capsys: pytest.CaptureFixture
) -> None:
    from engine.cli import main

    broken = tmp_path / "iotcrm.toml"
    broken.write_text("[kafka]\nbootstrap = 5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(broken), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "bootstrap" in err

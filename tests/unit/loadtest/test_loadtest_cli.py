"""``iotcrm simulate --dry-run`` and ``iotcrm score`` through the real CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import build_parser, main
from engine.cli_args import duration
from loadtest import cli as loadtest_cli

END_TS = "1763700000"


def _simulate(tmp_path: Path, name: str, *extra: str) -> tuple[Path, Path]:
    events, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.truth.json"
    code = main(
        [
            "simulate",
            "--customers",
            "12",
            "--devices-per-customer",
            "2",
            "--seed",
            "4",
            "--span",
            "12h",
            "--end-ts",
            END_TS,
            "--truth",
            str(truth),
            "--dry-run",
            str(events),
            *extra,
        ]
    )
    assert code == 0
    return events, truth


def test_dry_run_writes_reproducible_jsonl_and_a_matching_truth(tmp_path: Path) -> None:
    events, truth_path = _simulate(tmp_path, "a")
    again, _ = _simulate(tmp_path, "b")
    assert events.read_bytes() == again.read_bytes()
    truth = orjson.loads(truth_path.read_bytes())
    lines = events.read_bytes().splitlines()
    assert len(lines) == truth["counts"]["records"]
    assert truth["params"]["span_s"] == 43200.0 and truth["window"]["end_ts"] == float(END_TS)
    assert truth["params"]["customers"] == 12 and truth["seed"] == 4


def test_options_reach_the_simulation(tmp_path: Path) -> None:
    events, truth_path = _simulate(
        tmp_path,
        "c",
        "--canonical",
        "--episode-share",
        "silence=0",
        "--device-types",
        "washer,wearable",
    )
    truth = orjson.loads(truth_path.read_bytes())
    first = orjson.loads(events.read_bytes().splitlines()[0])
    assert "customer_id" in first and "device_type" in first
    assert truth["params"]["episodes"]["silence"] == 0.0
    assert {e["episode"] for e in truth["expected_actions"]}.isdisjoint({"silence"})
    assert {d["device_type"] for d in map(orjson.loads, events.read_bytes().splitlines())} == {
        "washer",
        "wearable",
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--canonical"],  # canonical output is for dry runs only
        ["simulate", "--dry-run", "-", "--device-types", "toaster"],
    ],
)
def test_invalid_combinations_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "iotcrm simulate:" in capsys.readouterr().err


def test_bad_values_are_refused_by_the_parser() -> None:
    for argv in (
        ["simulate", "--span", "two days"],
        ["simulate", "--malformed-share", "1.5"],
        ["simulate", "--episode-share", "meteor=0.1"],
    ):
        with pytest.raises(SystemExit):
            main(argv)


def _perfect_actions(truth: dict[str, Any]) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "action_id": f"a{i}",
                "type": e["type"],
                "customer_id": e["customer_id"],
                "device_id": e["device_id"],
                "rule": {"id": e["rule"], "version": 1},
                "at": e["expected_at"],
            }
        )
        for i, e in enumerate(truth["expected_actions"])
    ]


def test_score_reports_perfect_actions_as_perfect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, truth_path = _simulate(tmp_path, "d")
    truth = orjson.loads(truth_path.read_bytes())
    actions = tmp_path / "actions.jsonl"
    actions.write_bytes(b"\n".join(_perfect_actions(truth)) + b"\n")
    capsys.readouterr()
    assert main(["score", "--truth", str(truth_path), "--actions", str(actions), "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["total"]["tp"] == len(truth["expected_actions"]) > 0
    assert result["total"]["precision"] == 1.0 and result["total"]["recall"] == 1.0
    assert main(["score", "--truth", str(truth_path), "--actions", str(actions)]) == 0
    assert "total" in capsys.readouterr().out


def test_score_refuses_a_file_that_is_not_a_truth(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    assert main(["score", "--truth", str(bogus), "--actions", str(bogus)]) == 2


def test_durations_on_the_command_line_read_as_in_rules() -> None:
    assert duration("2d") == 172800.0
    assert duration("90m") == 5400.0
    assert duration("500ms") == 0.5
    assert duration("12.5") == 12.5
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration '-3h'"):
        duration("-3h")


def test_register_contributes_every_subcommand_and_can_grow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert {"simulate", "score"} <= set(_subcommands(build_parser()))

    def add_extra(subparsers: argparse._SubParsersAction) -> None:
        subparsers.add_parser("extra-for-test").set_defaults(func=lambda args: 0)

    monkeypatch.setattr(loadtest_cli, "SUBCOMMANDS", (*loadtest_cli.SUBCOMMANDS, add_extra))
    assert {"simulate", "score", "extra-for-test"} <= set(_subcommands(build_parser()))


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []

"""The shipped rules, replayed offline over a canonical dry run, take exactly
the actions the simulator's truth expects: the simulator and the rules agree
on thresholds, timing and consent."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from loadtest_helpers import END_TS

from engine.cli import main
from loadtest.accuracy import score

RULES = Path(__file__).resolve().parents[3] / "rules"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("offline")
    events, truth = folder / "events.jsonl", folder / "truth.json"
    argv = ["simulate", "--customers", "60", "--devices-per-customer", "2", "--seed", "11"]
    argv += ["--marketing-consent-share", "0.6", "--end-ts", str(END_TS)]
    argv += ["--truth", str(truth), "--dry-run", str(events), "--canonical"]
    assert main(argv) == 0
    return events, truth


def test_offline_runner_takes_exactly_the_expected_actions(
    dry_run: tuple[Path, Path], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    events, truth_path = dry_run
    capsysbinary.readouterr()
    assert main(["rules", "run", str(RULES), str(events), "--until", str(END_TS)]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    truth = orjson.loads(truth_path.read_bytes())
    result = score(truth, map(orjson.loads, lines))
    assert result["unreadable_actions"] == 0
    assert result["consent_violations"] == 0
    assert result["total"]["fp"] == 0
    assert result["total"]["tp"] == len(truth["expected_actions"]) > 0
    for kind, row in result["episodes"].items():
        assert row["detected"] == row["expected"] > 0, kind


def test_without_consent_the_rules_suppress_what_the_truth_suppresses(
    dry_run: tuple[Path, Path], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    events, truth_path = dry_run
    capsysbinary.readouterr()
    argv = ["rules", "run", str(RULES), str(events), "--until", str(END_TS), "--include-suppressed"]
    assert main(argv) == 0
    firings = [orjson.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    truth = orjson.loads(truth_path.read_bytes())
    suppressed = {
        (f["rule"], f["key"])
        for f in firings
        if str(f.get("suppressed", "")).startswith("consent:")
    }
    expected = {(e["rule"], e["device_id"] or e["customer_id"]) for e in truth["suppressed"]}
    assert expected and expected == suppressed

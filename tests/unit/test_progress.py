"""Progress of long CLI work goes to stderr where someone watches, never into
the output meant for programs."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.progress import PROGRESS_ENV, progress_enabled

RULE = """\
- id: hot
  key: customer
  when: {condition: "event.temperature > 90"}
  action: {type: support_case, payload: {reason: hot}}
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_unless_the_environment_says_otherwise() -> None:
    assert progress_enabled({}, Terminal()) is True
    assert progress_enabled({}, io.StringIO()) is False  # a pipe, a CI log
    assert progress_enabled({PROGRESS_ENV: "0"}, Terminal()) is False
    assert progress_enabled({PROGRESS_ENV: "1"}, io.StringIO()) is True


@pytest.mark.parametrize("shown", [True, False])
def test_a_replay_reports_progress_on_stderr_and_keeps_stdout_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, shown: bool
) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "1" if shown else "0")
    rules = tmp_path / "hot.yaml"
    rules.write_text(RULE)
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "id": f"e{i}",
            "ts": i,
            "device_id": "d1",
            "customer_id": "c1",
            "kind": "telemetry",
            "temperature": 80 + i,
        }
        for i in range(20)
    ]
    events.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert main(["rules", "run", str(rules), str(events)]) == 0
    out, err = capsys.readouterr()
    firings = [orjson.loads(line) for line in out.splitlines()]
    assert [f["events"] for f in firings] == [[f"e{i}"] for i in range(11, 20)]
    last = err.replace("\r", "\n").strip().splitlines()[-1] if err.strip() else ""
    assert last.startswith("replaying: 20.0events") is shown, err

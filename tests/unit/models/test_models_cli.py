"""``iotcrm models backtest|status`` and the Phishing equality with River."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from models_helpers import SHIPPED_MODELS, feed, synthetic_stream
from river import datasets, evaluate, linear_model, metrics, preprocessing

from engine.cli import main
from engine.models import load_models

PHISHING_MODELS = """\
models:
  - name: phishing
    kind: binary
    pipeline: StandardScaler | LogisticRegression
    features: [event.*]
    label: {field: event.is_phishing}
"""


def backtest(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", "backtest", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def phishing_files(tmp_path: Path) -> tuple[Path, Path]:
    models = tmp_path / "phishing.yaml"
    models.write_text(PHISHING_MODELS)
    events = tmp_path / "phishing.jsonl"
    with events.open("w") as out:
        for i, (x, y) in enumerate(datasets.Phishing()):
            # envelope fields first: they must not become features or shift the order
            record = {
                "id": f"p{i}",
                "ts": 1_700_000_000 + i,
                "device_id": "d1",
                "kind": "telemetry",
                **x,
                "is_phishing": y,
            }
            out.write(json.dumps(record) + "\n")
    return models, events


def test_backtest_equals_river_progressive_val_score(
    capsys: pytest.CaptureFixture[str], phishing_files: tuple[Path, Path]
) -> None:
    metric = metrics.Accuracy() + metrics.ROCAUC()
    evaluate.progressive_val_score(
        datasets.Phishing(),
        preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        metric,
    )
    accuracy, roc_auc = (m.get() for m in metric)

    code, out, err = backtest(capsys, *map(str, phishing_files), "--model", "phishing")

    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1
    result = json.loads(out)
    assert result["model"] == "phishing"
    assert result["n"] == 1250
    assert result["metrics"]["Accuracy"] == accuracy
    assert result["metrics"]["ROCAUC"] == roc_auc
    assert result["metrics"]["n_labelled"] == 1250


def test_backtest_reads_stdin(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    phishing_files: tuple[Path, Path],
) -> None:
    models, events = phishing_files
    code, from_file, _ = backtest(capsys, str(models), str(events), "--model", "phishing")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(events.read_bytes())))

    code, from_stdin, _ = backtest(capsys, str(models), "-", "--model", "phishing")

    assert code == 0
    assert from_stdin == from_file


def test_backtest_replays_envelopes_and_outcomes_like_the_live_calls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    stream = list(synthetic_stream(1500))
    events = tmp_path / "mixed.jsonl"
    with events.open("w") as out:
        for what, record, customer, device in stream:
            envelope = {"event": record, "customer": customer, "device": device}
            line = record if what == "outcome" else envelope
            out.write(json.dumps(line) + "\n")
    live = load_models(SHIPPED_MODELS)
    feed(live, stream)

    code, out, _ = backtest(capsys, str(SHIPPED_MODELS), str(events), "--model", "churn")

    result = json.loads(out)
    assert code == 0
    assert result["n"] == sum(1 for what, *_ in stream if what == "event")
    assert result["metrics"] == live.metrics()["churn"]
    assert result["metrics"]["outcomes_matched"] > 0


def test_backtest_unknown_model_exits_2(
    capsys: pytest.CaptureFixture[str], phishing_files: tuple[Path, Path]
) -> None:
    code, out, err = backtest(capsys, *map(str, phishing_files), "--model", "nope")

    assert (code, out) == (2, "")
    assert "no model named nope" in err


def test_backtest_bad_model_file_exits_2_with_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    models = tmp_path / "bad.yaml"
    models.write_text("- name: x\n  kind: anomaly\n  pipeline: exec('1')\n  features: [event.a]\n")
    events = tmp_path / "e.jsonl"
    events.write_text("")

    code, out, err = backtest(capsys, str(models), str(events), "--model", "x")

    assert (code, out) == (2, "")
    assert f"{models}:3:13: pipeline: unknown estimator 'exec'" in err


def test_backtest_bad_json_line_exits_1_naming_the_line(
    capsys: pytest.CaptureFixture[str], phishing_files: tuple[Path, Path], tmp_path: Path
) -> None:
    models, _ = phishing_files
    events = tmp_path / "bad.jsonl"
    events.write_text('{"id": "a", "ts": 1, "https": 1.0}\n\n{"id": \n')

    code, out, err = backtest(capsys, str(models), str(events), "--model", "phishing")

    assert (code, out) == (1, "")
    assert f"{events}:3: not JSON" in err


@pytest.fixture
def status_server() -> Iterator[tuple[str, dict]]:
    payload = {"0": {"churn": {"n": 3, "Accuracy": 0.5}}, "1": {"churn": {"n": 0}}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200 if self.path == "/models/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/models/status", payload
    finally:
        server.shutdown()
        server.server_close()


def test_status_prints_the_workers_metrics(
    capsys: pytest.CaptureFixture[str], status_server: tuple[str, dict]
) -> None:
    url, payload = status_server

    code = main(["models", "status", "--url", url])

    assert code == 0
    assert json.loads(capsys.readouterr().out) == payload


def test_status_unreachable_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/models/status"

    code = main(["models", "status", "--url", url, "--timeout", "2"])

    assert code == 1
    assert f"cannot reach {url}" in capsys.readouterr().err


def test_status_from_a_snapshot_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    models = load_models(SHIPPED_MODELS)
    feed(models, synthetic_stream(300))
    snapshot = tmp_path / "partition-0.snapshot"
    snapshot.write_bytes(models.snapshot())

    code = main(["models", "status", "--file", str(snapshot), "--models", str(SHIPPED_MODELS)])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["restored"] == ["anomaly", "churn", "depletion_days"]
    assert report["models"] == json.loads(json.dumps(models.metrics()))


def test_status_from_a_file_that_is_not_a_snapshot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x80\x04junk")

    code = main(["models", "status", "--file", str(junk), "--models", str(SHIPPED_MODELS)])

    assert code == 1
    assert "not a model snapshot" in capsys.readouterr().err


def test_status_defaults_to_the_configured_worker_port(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    status_server: tuple[str, dict],
    tmp_path: Path,
) -> None:
    url, payload = status_server
    port = url.split(":")[2].split("/")[0]
    (tmp_path / "iotcrm.toml").write_text("[worker]\nweb_port = 1\n")
    monkeypatch.setenv("IOTCRM_CONFIG", str(tmp_path / "iotcrm.toml"))
    monkeypatch.setenv("IOTCRM_WORKER_WEB_PORT", port)  # the environment wins over the file

    code = main(["models", "status"])

    assert code == 0
    assert json.loads(capsys.readouterr().out) == payload

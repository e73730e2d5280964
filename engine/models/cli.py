"""``iotcrm models backtest|status``.

``backtest`` replays a JSON-lines file through :meth:`ModelSet.process` and
:meth:`ModelSet.observe_outcome`, the same calls a live worker makes, and
prints one JSON object: ``{"model": NAME, "n": <events>, "metrics": {...}}``.
A line is an outcome if it has ``outcome_id``; an envelope
``{"event": {...}, "customer": {...}, "device": {...}}`` if ``event`` is an
object; otherwise it is the event itself (with empty customer and device state).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from engine.models.errors import ModelConfigError
from engine.models.modelset import ModelSet, load_models
from engine.models.snapshot import SnapshotError
from engine.progress import progress

STATUS_PATH = "/models/status"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="backtest and inspect online models")
    commands = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)

    backtest = commands.add_parser(
        "backtest",
        help="replay events (and outcomes) through a model; print its prequential metrics",
        description=(
            "Replay a JSON-lines file through the model layer, predict-then-learn, and print "
            'one JSON object {"model", "n", "metrics"}. Lines with "outcome_id" are outcomes; '
            'lines {"event": {...}, "customer": {...}, "device": {...}} carry state.'
        ),
    )
    backtest.add_argument("models_file", metavar="MODELS_FILE", help="model declarations (YAML)")
    backtest.add_argument("events", metavar="EVENTS", help="JSON-lines file, or - for stdin")
    backtest.add_argument("--model", required=True, metavar="NAME", help="the model to report")
    backtest.set_defaults(func=run_backtest)

    status = commands.add_parser(
        "status",
        help="print live model metrics from a worker (or from a snapshot file)",
    )
    status.add_argument(
        "--url",
        default="",
        help="worker status URL (default: http://127.0.0.1:<worker.web_port>/models/status)",
    )
    status.add_argument(
        "--file", metavar="SNAPSHOT", default="", help="read a ModelSet snapshot file instead"
    )
    status.add_argument(
        "--models",
        metavar="MODELS_FILE",
        default="",
        help="model declarations for --file (default: the configured models.path)",
    )
    status.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    status.set_defaults(func=run_status)


def _fail(message: str, code: int) -> int:
    print(f"iotcrm models: {message}", file=sys.stderr)
    return code


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    stream: IO[bytes]
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield number, line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def replay(models: ModelSet, path: str) -> int:
    """Feed every line of ``path`` to ``models``; returns the number of events."""
    with progress("backtesting", unit="events") as bar:
        return _replay_lines(models, path, bar)


def _replay_lines(models: ModelSet, path: str, bar: Any) -> int:
    events = 0
    empty: dict[str, Any] = {}
    for number, line in _lines(path):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        if "outcome_id" in record:
            models.observe_outcome(record)
            continue
        inner = record.get("event")
        if isinstance(inner, dict):
            customer = record.get("customer") or empty
            device = record.get("device") or empty
            models.process(inner, customer=customer, device=device)
        else:
            models.process(record, customer=empty, device=empty)
        events += 1
        bar.update()
    return events


def run_backtest(args: argparse.Namespace) -> int:
    try:
        models = load_models(args.models_file, only=[args.model])
    except ModelConfigError as exc:
        return _fail(str(exc), 2)
    try:
        events = replay(models, args.events)
    except OSError as exc:
        return _fail(f"cannot read {args.events}: {exc.strerror or exc}", 1)
    except ValueError as exc:
        return _fail(str(exc), 1)
    result = {"model": args.model, "n": events, "metrics": models.metrics()[args.model]}
    print(json.dumps(result))
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from engine import cli_args

    return cli_args.settings(getattr(args, "config", ""), "iotcrm models")


def run_status(args: argparse.Namespace) -> int:
    if args.file:
        return _status_from_snapshot(args)
    url = args.url or f"http://127.0.0.1:{_settings(args).worker.web_port}{STATUS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            body = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _fail(f"cannot reach {url}: {reason}", 1)
    try:
        payload = json.loads(body)
    except ValueError:
        return _fail(f"{url} did not answer JSON", 1)
    print(json.dumps(payload, indent=2, sort_keys=True))
    return 0


def _status_from_snapshot(args: argparse.Namespace) -> int:
    models_file = args.models or _settings(args).models.path
    try:
        models = load_models(models_file)
        restored = models.restore(Path(args.file).read_bytes())
    except ModelConfigError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}", 1)
    except SnapshotError as exc:
        return _fail(f"{args.file}: {exc}", 1)
    payload = {
        "snapshot": args.file,
        "restored": restored,
        "stream_time": models.stream_time,
        "models": models.metrics(),
    }
    print(json.dumps(payload, indent=2, sort_keys=True))
    return 0

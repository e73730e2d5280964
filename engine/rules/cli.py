"""``iotcrm rules validate|test|run``: the rule author's tools.

- ``validate PATH...`` prints every error as
  ``file:line:col: error[CODE]: message``, then every warning as
  ``file:line:col: warning[CODE]: message``, and exits 1 on any error;
  otherwise prints a one-line summary (to stderr) and exits 0. Warnings do
  not fail validation unless ``--strict``. ``--format json`` prints one JSON
  document instead (:func:`validation_report`), with the same exit codes.
- ``test PATH...`` runs the rules' embedded tests (after the files'
  warnings, if any): one ``PASSED``/``FAILED`` line per test (with the
  differences under a failure), then ``N passed, M failed``. Exit codes as
  pytest's: 0 all passed, 1 a test failed, 2 the rule files have errors, 5 no
  tests.
- ``run RULES EVENTS [--until TS]`` replays a JSON-lines file (or ``-``) and
  writes one JSON line per emitted firing to stdout, nothing else (errors and
  warnings go to stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from engine.actions import build_action
from engine.progress import progress
from engine.rules.compiler import load_ruleset
from engine.rules.errors import RuleError, RuleFileError
from engine.rules.model import RuleSet
from engine.rules.runner import EventError, OfflineRunner, Result, split_event
from engine.rules.source import parse_timestamp
from engine.rules.testing import run_tests

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERRORS = 2
EXIT_NO_TESTS = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    rules = subparsers.add_parser(
        "rules",
        help="validate, test and replay rule files",
        description="Validate, test and replay rule files (see docs/rules.md).",
    )
    commands = rules.add_subparsers(dest="rules_command", metavar="COMMAND")
    rules.set_defaults(func=lambda _args: (rules.print_help(), 2)[1])

    validate = commands.add_parser(
        "validate",
        help="check rule files; print file:line:col: error[CODE]: message per problem",
        description=(
            "Check rule files: every error and warning with its file, line, column and "
            "code (docs/rules.md, 'Error codes'). Exit 1 on any error; warnings alone "
            "exit 0 unless --strict."
        ),
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="rule file or folder")
    validate.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default): one line per problem; json: one report on stdout",
    )
    validate.add_argument(
        "--strict", action="store_true", help="warnings fail validation too (exit 1)"
    )
    validate.set_defaults(func=validate_command)

    test = commands.add_parser("test", help="run the tests embedded in rule files")
    test.add_argument("paths", nargs="+", metavar="PATH", help="rule file or folder")
    test.set_defaults(func=test_command)

    run = commands.add_parser(
        "run",
        help="replay events through rules; one JSON line per firing on stdout",
        description=(
            "Replay a JSON-lines event file (or - for stdin) through rules, as one "
            "single-partition worker would. Each emitted firing is one JSON line "
            "{rule, key, key_kind, at, events, action} on stdout."
        ),
    )
    run.add_argument("rules", metavar="RULES", help="rule file or folder")
    run.add_argument("events", metavar="EVENTS", help="JSON-lines file, or - for stdin")
    run.add_argument(
        "--until",
        metavar="TS",
        help="advance time to TS (epoch seconds or RFC 3339) after the last event",
    )
    run.add_argument(
        "--include-suppressed",
        action="store_true",
        help="also write suppressed firings (with a 'suppressed' reason, no action)",
    )
    run.set_defaults(func=run_command)


def _load(paths: Iterable[str], out: IO[str]) -> RuleSet | None:
    """The rule set, with its warnings printed to ``out``; None after printing
    the errors (then the warnings) when the files do not load."""
    try:
        ruleset = load_ruleset(list(paths))
    except RuleFileError as exc:
        for problem in [*exc.errors, *exc.warnings]:
            print(problem, file=out)
        return None
    for warning in ruleset.warnings:
        print(warning, file=out)
    return ruleset


def validation_report(paths: Iterable[str], *, strict: bool = False) -> dict[str, Any]:
    """What ``iotcrm rules validate --format json`` prints. ``rules``,
    ``disabled`` and ``tests`` are null when the files do not load: nothing
    was loaded to count."""
    errors: list[RuleError] = []
    warnings: list[RuleError]
    ruleset: RuleSet | None = None
    try:
        ruleset = load_ruleset(list(paths))
    except RuleFileError as exc:
        errors, warnings, files = exc.errors, exc.warnings, exc.files
    else:
        warnings, files = ruleset.warnings, ruleset.files
    report: dict[str, Any] = {
        "ok": not errors and not (strict and warnings),
        "files": files,
        "rules": None if ruleset is None else len(ruleset.rules),
        "disabled": None if ruleset is None else len(ruleset.disabled),
        "tests": None if ruleset is None else _count_tests(ruleset),
        "errors": [error.as_dict() for error in errors],
        "warnings": [warning.as_dict() for warning in warnings],
    }
    return report


def _count_tests(ruleset: RuleSet) -> int:
    return sum(len(rule.tests) for rule in ruleset.all_rules())


def validate_command(args: argparse.Namespace) -> int:
    if args.format == "json":
        report = validation_report(args.paths, strict=args.strict)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK if report["ok"] else EXIT_FAILED
    ruleset = _load(args.paths, sys.stdout)
    if ruleset is None:
        return EXIT_FAILED
    warned = len(ruleset.warnings)
    if args.strict and warned:
        print(f"FAILED (--strict): {warned} warning(s)", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"OK: {len(ruleset.files)} file(s), {len(ruleset.rules)} enabled rule(s), "
        f"{len(ruleset.disabled)} disabled, {_count_tests(ruleset)} test(s)"
        + (f", {warned} warning(s)" if warned else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def test_command(args: argparse.Namespace) -> int:
    ruleset = _load(args.paths, sys.stdout)
    if ruleset is None:
        return EXIT_ERRORS
    outcomes = run_tests(ruleset)
    for outcome in outcomes:
        print(("PASSED " if outcome.passed else "FAILED ") + outcome.node_id)
        for line in outcome.problems:
            print("    " + line)
    passed = sum(1 for o in outcomes if o.passed)
    failed = len(outcomes) - passed
    print(f"{passed} passed, {failed} failed")
    if not outcomes:
        return EXIT_NO_TESTS
    return EXIT_FAILED if failed else EXIT_OK


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    if path == "-":
        for number, line in enumerate(sys.stdin.buffer, start=1):
            yield number, line
        return
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line


def firing_line(result: Result) -> bytes:
    """The JSON line ``iotcrm rules run`` writes for one firing."""
    firing = result.firing
    line: dict[str, Any] = {
        "rule": firing.rule_id,
        "key": firing.key,
        "key_kind": firing.key_kind,
        "at": firing.at,
        "events": firing.event_ids,
    }
    if firing.suppressed is None:
        line["action"] = build_action(
            firing,
            customer_id=result.customer_id or "",
            device_id=firing.device_id,
            emitted_at=firing.at,
        )
    else:
        line["suppressed"] = firing.suppressed
    return orjson.dumps(line) + b"\n"


def run_command(args: argparse.Namespace) -> int:
    ruleset = _load([args.rules], sys.stderr)
    if ruleset is None:
        return EXIT_FAILED
    until = None
    if args.until is not None:
        try:
            until = parse_timestamp(_number_or_text(args.until))
        except ValueError as exc:
            print(f"--until: {exc}", file=sys.stderr)
            return EXIT_ERRORS
    runner = OfflineRunner(ruleset)
    out = sys.stdout.buffer
    show_suppressed = args.include_suppressed

    def emit(results: list[Result]) -> None:
        for result in results:
            if result.firing.suppressed is None or show_suppressed:
                out.write(firing_line(result))

    bar = progress("replaying", unit="events")
    try:
        for number, raw in _lines(args.events):
            if not raw.strip():
                continue
            try:
                event, customer, device, score = split_event(orjson.loads(raw))
            except (orjson.JSONDecodeError, EventError) as exc:
                print(f"{args.events}:{number}: {exc}", file=sys.stderr)
                return EXIT_FAILED
            emit(runner.feed(event, customer=customer, device=device, score=score))
            bar.update()
        emit(runner.finish(until))
    except OSError as exc:
        print(f"{args.events}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        bar.close()
        out.flush()
    late = len(runner.engine.drain_late())
    if late:
        print(f"{late} late event(s) ignored by windows", file=sys.stderr)
    return EXIT_OK


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value

"""The load tests' ``iotcrm`` commands: ``simulate``, ``score``, ``demo``,
``bench`` and ``chaos``.

:func:`register` is the ``iotcrm.commands`` entry point of the load-test
distribution (``loadtest/pyproject.toml``): ``iotcrm`` offers these commands
where it is installed, and the runtime image, which lacks it, does not.

Kafka is imported only when ``simulate`` actually publishes, so ``--dry-run``
and ``score`` work without a broker library loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import fields, replace
from typing import Any

import orjson

from engine import cli_args
from engine.progress import progress
from loadtest.accuracy import format_score, read_actions, score
from loadtest.episodes import EpisodeShares
from loadtest.fleet import DEVICE_TYPES
from loadtest.simulator import SimParams, Simulation
from loadtest.truth import dump_truth, load_truth


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share must be within [0, 1], not {text}")
    return value


def _episode_share(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    known = [f.name for f in fields(EpisodeShares)]
    if name not in known or not value:
        raise argparse.ArgumentTypeError(f"expected KIND=SHARE with KIND one of {', '.join(known)}")
    return name, _share(value)


def _add_simulate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="generate a seeded device fleet with known episodes and publish it",
        description=(
            "Generate N customers x M devices with daily rhythms, mixed units and injected "
            "episodes (degrading machines, running-out detergent, fading usage, error bursts, "
            "silent devices, error-then-reboot), publish registry, profiles and events to Kafka "
            "(or write JSONL with --dry-run), and write the ground truth for `iotcrm score`. "
            "See docs/simulator.md."
        ),
    )
    defaults = SimParams()
    parser.add_argument(
        "--customers",
        type=cli_args.count,
        default=defaults.customers,
        help="customers in the fleet",
    )
    parser.add_argument(
        "--devices-per-customer",
        type=cli_args.count,
        default=defaults.devices_per_customer,
        help="devices each customer owns",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the simulation's seed")
    parser.add_argument(
        "--span",
        type=cli_args.duration,
        default=defaults.span_s,
        help="simulated time span (default 2d)",
    )
    parser.add_argument(
        "--end-ts",
        type=float,
        default=None,
        help="end of simulated time, epoch seconds (default: now)",
    )
    parser.add_argument(
        "--device-types", default=",".join(DEVICE_TYPES), help="comma-separated device types"
    )
    parser.add_argument(
        "--marketing-consent-share",
        type=_share,
        default=defaults.marketing_consent_share,
        help="share of customers consenting to marketing (coupons, offers)",
    )
    parser.add_argument(
        "--service-consent-share",
        type=_share,
        default=defaults.service_consent_share,
        help="share of customers consenting to service contact (bookings, cases)",
    )
    parser.add_argument(
        "--malformed-share",
        type=_share,
        default=defaults.malformed_share,
        help="share of events sent malformed (for the dead-letter path)",
    )
    parser.add_argument(
        "--duplicate-share",
        type=_share,
        default=defaults.duplicate_share,
        help="share of events sent twice (for dedup)",
    )
    parser.add_argument(
        "--episode-share",
        type=_episode_share,
        action="append",
        default=[],
        metavar="KIND=SHARE",
        help="override an episode share, e.g. silence=0.1 (repeatable)",
    )
    parser.add_argument(
        "--due-slack",
        type=cli_args.duration,
        default=defaults.due_slack_s,
        help="added to each ideal firing time to give due_by (default 5m)",
    )
    parser.add_argument(
        "--truth", default="truth.json", help="ground truth output file (default truth.json)"
    )
    parser.add_argument(
        "--dry-run",
        metavar="FILE",
        help="write events as JSON lines to FILE ('-': stdout) instead of publishing",
    )
    parser.add_argument(
        "--canonical",
        action="store_true",
        help=(
            "with --dry-run: write events as rules see them (canonical units, customer_id, "
            "device_type; no malformed events or duplicates)"
        ),
    )
    parser.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default from configuration)"
    )
    parser.add_argument(
        "--rate",
        type=cli_args.non_negative_number,
        default=0.0,
        help="events per second; 0: as fast as possible",
    )
    parser.add_argument(
        "--topic-mode",
        choices=("per-device", "shared"),
        default="per-device",
        help="iot.device.<id> topics or the shared telemetry topic",
    )
    parser.add_argument(
        "--create-topics",
        action="store_true",
        help="create missing topics with the admin client first",
    )
    parser.add_argument(
        "--no-outcomes",
        action="store_true",
        help="do not publish churn outcomes to the outcomes topic",
    )
    parser.set_defaults(func=run_simulate)


def _params(args: argparse.Namespace) -> SimParams:
    device_types = tuple(t.strip() for t in args.device_types.split(",") if t.strip())
    unknown = set(device_types) - set(DEVICE_TYPES)
    if unknown:
        raise ValueError(f"unknown device types: {', '.join(sorted(unknown))}")
    return SimParams(
        customers=args.customers,
        devices_per_customer=args.devices_per_customer,
        seed=args.seed,
        span_s=args.span,
        end_ts=args.end_ts,
        device_types=device_types,
        marketing_consent_share=args.marketing_consent_share,
        service_consent_share=args.service_consent_share,
        malformed_share=args.malformed_share,
        duplicate_share=args.duplicate_share,
        due_slack_s=args.due_slack,
        episodes=replace(EpisodeShares(), **dict(args.episode_share)),
        canonical=args.canonical,
    )


def _write_jsonl(sim: Simulation, target: str) -> int:
    count = 0
    context = nullcontext(sys.stdout.buffer) if target == "-" else open(target, "wb")  # noqa: SIM115
    with context as out, progress("simulating", unit="records") as bar:
        write = out.write
        for _, payload in sim.events():
            write(payload)
            write(b"\n")
            count += 1
            if count % 1000 == 0:
                bar.update(1000)
    return count


def run_simulate(args: argparse.Namespace) -> int:
    try:
        params = _params(args)
    except ValueError as exc:
        print(f"iotcrm simulate: {exc}", file=sys.stderr)
        return 2
    if params.canonical and not args.dry_run:
        print("iotcrm simulate: --canonical needs --dry-run", file=sys.stderr)
        return 2
    sim = Simulation(params)
    if args.dry_run:
        written = _write_jsonl(sim, args.dry_run)
        summary: dict[str, Any] = {"records": written, "file": args.dry_run}
    else:
        settings = cli_args.settings(args.config, "iotcrm simulate")
        from loadtest.publish import PublishOptions, publish

        options = PublishOptions(
            bootstrap=args.bootstrap or settings.kafka.bootstrap,
            topic_mode=args.topic_mode,
            telemetry_topic=settings.kafka.telemetry_topic,
            registry_topic=settings.kafka.registry_topic,
            customers_topic=settings.kafka.customers_topic,
            outcomes_topic=settings.kafka.outcomes_topic,
            rate=args.rate,
            create_topics=args.create_topics,
            partitions=settings.kafka.partitions,
            replication_factor=settings.kafka.replication_factor,
            send_outcomes=not args.no_outcomes,
        )

        with progress("publishing", unit="records") as bar:

            def report(sent: int, _elapsed: float) -> None:
                bar.update(sent - bar.n)

            stats = asyncio.run(publish(sim, options, progress=report))
        summary = {
            "records": stats.records,
            "registry_records": stats.registry_records,
            "profiles": stats.profiles,
            "outcomes": stats.outcomes,
            "bytes": stats.bytes,
            "elapsed_s": round(stats.elapsed_s, 3),
            "rate": round(stats.rate, 1),
            "bootstrap": options.bootstrap,
            "topic_mode": options.topic_mode,
        }
    truth = sim.truth()
    dump_truth(truth, args.truth)
    summary.update(
        truth=args.truth,
        expected_actions=len(truth["expected_actions"]),
        suppressed=len(truth["suppressed"]),
        duplicates=truth["counts"]["duplicates"],
        expected_deadletters=truth["counts"]["expected_deadletters"],
        window=truth["window"],
    )
    print(orjson.dumps(summary).decode(), file=sys.stderr)
    return 0


def _add_score(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score emitted actions against a simulation's ground truth",
        description=(
            "Match actions (JSON lines: downstream actions, or `iotcrm rules run` output) "
            "to the expected actions of a truth file written by `iotcrm simulate`, and print "
            "precision, recall, tp/fp/fn and lead times per action type."
        ),
    )
    parser.add_argument("--truth", required=True, help="truth file from `iotcrm simulate`")
    parser.add_argument("--actions", required=True, help="actions as JSON lines ('-': stdin)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    try:
        truth = load_truth(args.truth)
        source = sys.stdin if args.actions == "-" else args.actions
        result = score(truth, read_actions(source))
    except (OSError, ValueError) as exc:
        print(f"iotcrm score: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_score(result))
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="start a worker, simulate a device fleet for about a minute, report what happened",
    )
    demo.add_argument("--customers", type=cli_args.count, default=40, help="customers (default 40)")
    demo.add_argument(
        "--devices-per-customer", type=cli_args.count, default=3, help="devices each (default 3)"
    )
    demo.add_argument(
        "--span",
        default="3d",
        help="whole UTC days of simulated time before the last closed day, up to now (default 3d)",
    )
    demo.add_argument(
        "--seconds",
        type=cli_args.non_negative_number,
        default=50.0,
        help="publishing time (default 50)",
    )
    demo.add_argument("--seed", type=int, default=7, help="simulation seed (default 7)")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    # The demo's module imports aiokafka: only when the demo runs.
    from loadtest.demo import DemoOptions, run

    settings = cli_args.settings(args.config, "iotcrm demo")
    options = DemoOptions(
        customers=args.customers,
        devices_per_customer=args.devices_per_customer,
        span=args.span,
        seconds=args.seconds,
        seed=args.seed,
        config=args.config,
    )
    return asyncio.run(run(settings, options))


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from loadtest.bench import __doc__ as bench_doc
    from loadtest.bench import add_arguments

    parser = subparsers.add_parser(
        "bench",
        help="benchmark the engine against a Quix Streams peer and a plain-consumer ceiling",
        description=(bench_doc or "").split("\n\n")[0]
        + " Needs the local Kafka and Cassandra; writes loadtest/results/.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import shlex

    from loadtest.bench import run_from_args

    return run_from_args(args, shlex.join(["iotcrm", *sys.argv[1:]]))


def _add_chaos(subparsers: argparse._SubParsersAction) -> None:
    from loadtest.chaos import __doc__ as chaos_doc
    from loadtest.chaos import add_arguments

    parser = subparsers.add_parser(
        "chaos",
        help="the engine under faults (kills, restarts, broker and Cassandra outages) "
        "against an undisturbed run",
        description=(chaos_doc or "").split("\n\n")[0]
        + " Needs the local Kafka and Cassandra (it stops and starts them); writes "
        "loadtest/results/chaos.md and chaos.json.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run_chaos)


def run_chaos(args: argparse.Namespace) -> int:
    import shlex

    from loadtest.chaos import run_from_args

    return run_from_args(args, shlex.join(["iotcrm", *sys.argv[1:]]))


#: Subcommand registrars; add one to contribute another ``iotcrm`` command.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_simulate,
    _add_score,
    _add_demo,
    _add_bench,
    _add_chaos,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    for add in SUBCOMMANDS:
        add(subparsers)

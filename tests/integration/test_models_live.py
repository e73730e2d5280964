"""Issues 5.5 and 5.3 on the live worker: models learn through Kafka exactly as
the backtest does, and their learning survives a crash up to the last checkpoint.

River's Phishing dataset (1250 labelled rows, offline) is written as the
telemetry of one device of one customer, so the order in which the model sees
the rows is the device topic's order; the feature names collide with no
canonical reading, so ingest passes them through unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import datasets

from engine.models import load_models
from loadtest.harness import WorkerProcess, wait_for
from tests.integration.kit import Namespace, read_all, register
from tests.integration.live_helpers import (
    checkpointed_metrics,
    idempotent_producer,
    iotcrm,
    publish,
)

PHISHING_MODELS = """\
models:
  - name: phishing
    kind: binary
    pipeline: StandardScaler | LogisticRegression
    features: [event.*]
    label: {field: event.is_phishing}
"""
DEVICE, CUSTOMER = "browser-1", "c-phish"
ROWS = 1250


@pytest.fixture
def phishing_setup(tmp_path: Path, namespace: Namespace) -> tuple[Path, list[dict[str, Any]]]:
    """The model file, an empty rule folder and the events, wired into the namespace."""
    models = tmp_path / "phishing.yaml"
    models.write_text(PHISHING_MODELS)
    rules = tmp_path / "no-rules"
    rules.mkdir()
    namespace.env["IOTCRM_MODELS_PATH"] = str(models)
    namespace.env["IOTCRM_RULES_PATH"] = str(rules)
    # One row a second, ending a minute ago: increasing and never in the future.
    start = time.time() - ROWS - 60
    events = [
        {
            "id": f"p{i}",
            "ts": start + i,
            "device_id": DEVICE,
            "kind": "telemetry",
            **x,
            "is_phishing": y,
        }
        for i, (x, y) in enumerate(datasets.Phishing())
    ]
    assert len(events) == ROWS
    return models, events


def backtest(models: Path, events: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    """``iotcrm models backtest`` over ``events``, as a subprocess: its JSON result."""
    lines = tmp_path / f"events-{len(events)}-{events[0]['id']}.jsonl"
    lines.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    done = iotcrm("models", "backtest", str(models), str(lines), "--model", "phishing")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def live_phishing(worker: WorkerProcess) -> dict[str, Any] | None:
    """The phishing metrics of the one partition that has models, or None."""
    status = worker.get("/models/status") or {}
    partitions = [models["phishing"] for models in status.values() if "phishing" in models]
    assert len(partitions) <= 1, f"one customer, one partition: {status}"
    return partitions[0] if partitions else None


async def wait_learned(worker: WorkerProcess, n: int, timeout: float = 60.0) -> dict[str, Any]:
    def learned() -> dict[str, Any] | None:
        if not worker.alive():
            raise AssertionError(f"worker exited; log tail:\n{worker.log_tail()}")
        metrics = live_phishing(worker)
        return metrics if metrics and metrics["n"] >= n else None

    return await wait_for(learned, timeout=timeout, what=f"{n} events learned")


async def start_worker(namespace: Namespace) -> WorkerProcess:
    producer = await idempotent_producer(namespace.settings.kafka.bootstrap)
    try:
        await register(producer, namespace, {DEVICE: (CUSTOMER, "wearable")})
    finally:
        await producer.stop()
    worker = namespace.worker().start()
    await worker.wait_ready()
    return worker


async def send(namespace: Namespace, events: list[dict[str, Any]]) -> None:
    producer = await idempotent_producer(namespace.settings.kafka.bootstrap)
    try:
        await publish(producer, [(namespace.device_topic(DEVICE), event) for event in events])
    finally:
        await producer.stop()


async def test_live_metrics_equal_the_backtest(
    namespace: Namespace, phishing_setup: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    models, events = phishing_setup
    worker = await start_worker(namespace)
    await send(namespace, events)

    live = await wait_learned(worker, ROWS)
    expected = backtest(models, events, tmp_path)

    assert expected["n"] == ROWS
    assert live["n"] == expected["metrics"]["n"] == ROWS
    assert live["n_labelled"] == ROWS
    # Equal floats: the live actor makes exactly the backtest's calls, in the same order.
    assert live["Accuracy"] == expected["metrics"]["Accuracy"]
    assert live["ROCAUC"] == expected["metrics"]["ROCAUC"]
    assert live == expected["metrics"]
    assert (await checkpointed_metrics(worker, ROWS))["actor"]["events"] == ROWS


async def checkpoints(namespace: Namespace, models: Path) -> list[dict[str, Any]]:
    """The model checkpoints in the changelog, oldest first, as their phishing
    metrics (the table also holds the partitions' clocks, ``clock-p<n>``)."""
    topic = f"{namespace.settings.worker.app_id}-model-checkpoints-changelog"
    found = []
    for record in await read_all(namespace.settings.kafka.bootstrap, topic):
        if b"clock-p" in record.key:
            continue
        restored = load_models(models)
        assert restored.restore(record.value) == ["phishing"]
        found.append({"key": record.key.decode(), **restored.metrics()["phishing"]})
    return found


# At 5 s no offset is committed before the kill: the replacement must read the
# stream from its start, not from its end (faust_compat, _seek_uncommitted_to_earliest).
@pytest.mark.parametrize("checkpoint_interval_s", ["1.0", "5.0"])
async def test_learning_survives_a_crash_up_to_the_last_checkpoint(
    namespace: Namespace,
    phishing_setup: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    checkpoint_interval_s: str,
) -> None:
    namespace.env["IOTCRM_WORKER_CHECKPOINT_INTERVAL_S"] = checkpoint_interval_s
    models, events = phishing_setup
    first, second = 600, 900
    worker = await start_worker(namespace)

    await send(namespace, events[:first])
    await wait_learned(worker, first)

    async def checkpointed(n: int) -> bool:
        found = await checkpoints(namespace, models)
        return bool(found) and found[-1]["n"] >= n

    # The models are checkpointed with the states, once per checkpoint interval.
    await wait_for(lambda: checkpointed(first), timeout=30, what=f"a checkpoint at n={first}")
    await send(namespace, events[first:second])
    at_kill = await wait_learned(worker, second)
    worker.kill()
    assert at_kill["n"] == second

    found = await checkpoints(namespace, models)
    assert len({c["key"] for c in found}) == 1, "one partition has models"
    n_checkpoint = found[-1]["n"]
    assert first <= n_checkpoint <= second

    # A replacement worker with nothing local (another host) restores from the changelogs.
    replacement = namespace.worker("w2").start()
    await replacement.wait_ready()
    await send(namespace, events[second:])
    resumed = await wait_learned(replacement, 1)
    assert resumed["n"] >= n_checkpoint, "continues from the checkpoint, not from zero"

    def caught_up() -> bool:
        state = replacement.get(f"/customers/{CUSTOMER}") or {}
        return state.get("counts", {}).get("events") == ROWS

    await wait_for(caught_up, timeout=60, what="all events in the customer state")
    final = live_phishing(replacement)
    assert final is not None

    # The model learned the checkpoint's events, then every event the restored
    # customer state had not seen (the rest is replayed, and dropped as
    # duplicates). Models and states are checkpointed together, so the two
    # resume from the same event: nothing is learned twice, nothing is lost,
    # and the result is the uninterrupted worker's, to the last bit.
    state_seen = n_checkpoint + ROWS - final["n"]
    assert state_seen == n_checkpoint, "the models resume where the customer state does"
    uninterrupted = backtest(models, events, tmp_path)["metrics"]
    assert final == uninterrupted
    print(
        f"checkpoint at n={n_checkpoint} (killed at n={second}); first seen after restart "
        f"n={resumed['n']}; final {final}"
    )

    status = iotcrm("models", "status", "--url", replacement.url + "/models/status")
    assert status.returncode == 0, status.stderr
    printed = json.loads(status.stdout)
    assert printed == replacement.get("/models/status")
    assert [models["phishing"] for models in printed.values()] == [final]

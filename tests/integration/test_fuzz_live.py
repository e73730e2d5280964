"""Issue 10.5: fuzzing at the door. 10,000 mutated device records (seeded)
go through a live worker: truncations, bit flips, huge and tiny numbers, NaN
spellings, deep nesting, long strings, unicode, wrong types, duplicated keys,
not JSON at all. The worker must not crash, and the counts must add up
exactly: every record taken in is processed, dead-lettered (with its exact
bytes and a reason), a duplicate or late; nothing else."""

from __future__ import annotations

import base64
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from loadtest.harness import wait_for
from tests.integration.kit import Namespace, read_all, register
from tests.integration.live_helpers import (
    checkpointed_metrics,
    idempotent_producer,
)

RECORDS = 10_000
SEED = 20261203
DEVICES = {"d1": ("c1", "washer"), "d2": ("c1", "compressor"), "d3": ("c2", "wearable")}
REASON_CODES = {"decode", "schema", "value", "unit", "future", "unregistered", "internal"}


def base_event(rng: random.Random, n: int, now: float) -> dict[str, Any]:
    device_id = rng.choice(sorted(DEVICES))
    return {
        "id": f"e{n}",
        "ts": now - 3600 + n * 0.1,
        "device_id": device_id,
        "kind": rng.choice(["telemetry", "status", "error", "usage"]),
        "temperature": round(rng.uniform(-10, 90), 2),
        "vibration_mm_s": round(rng.uniform(0, 12), 3),
    }


def _replace_number(rng: random.Random, event: dict[str, Any]) -> bytes:
    spelled = rng.choice(
        ["1e308", "1e400", "-1e400", "1e-320", "-0.0", str(2**70), "123456789012345678901234567890"]
    )
    text = orjson.dumps(event).decode()
    return text.replace(f'"temperature":{orjson.dumps(event["temperature"]).decode()}',
                        f'"temperature":{spelled}').encode()  # fmt: skip


def _nan(rng: random.Random, event: dict[str, Any]) -> bytes:
    spelled = rng.choice(["NaN", "nan", "Infinity", "-Infinity", "inf", '"NaN"', "1e999"])
    field = rng.choice(["temperature", "ts", "vibration_mm_s"])
    text = orjson.dumps(event).decode()
    value = orjson.dumps(event[field]).decode()
    return text.replace(f'"{field}":{value}', f'"{field}":{spelled}', 1).encode()


def _nest(rng: random.Random, event: dict[str, Any]) -> bytes:
    depth = rng.choice([5, 9, 30, 200])
    return orjson.dumps(event)[:-1] + b',"extra":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


def _long(rng: random.Random, event: dict[str, Any]) -> bytes:
    field = rng.choice(["id", "kind", "note", "device_id"])
    return orjson.dumps({**event, field: "x" * rng.choice([129, 5_000, 70_000])})


def _unicode(rng: random.Random, event: dict[str, Any]) -> bytes:
    text = rng.choice(["\u00e9t\u00e9", "\U0001f525", "\u200b", "\u202e", "\u0000", "a\u0301"])
    if rng.random() < 0.3:  # a lone surrogate: not valid UTF-8 once encoded
        return orjson.dumps(event)[:-1] + b',"note":"\xed\xa0\x80"}'
    return orjson.dumps({**event, rng.choice(["id", "note", "kind"]): text})


def _wrong_type(rng: random.Random, event: dict[str, Any]) -> bytes:
    field = rng.choice(["id", "ts", "device_id", "kind", "temperature"])
    wrong = rng.choice([None, True, [], {}, 42, "42", [1, 2]])
    return orjson.dumps({**event, field: wrong})


def _duplicate_key(rng: random.Random, event: dict[str, Any]) -> bytes:
    field = rng.choice(["id", "ts", "device_id", "kind"])
    again = orjson.dumps({field: rng.choice(["other", 1, None])})[1:-1]
    return orjson.dumps(event)[:-1] + b"," + again + b"}"


def _truncate(rng: random.Random, event: dict[str, Any]) -> bytes:
    raw = orjson.dumps(event)
    return raw[: rng.randrange(0, len(raw))]


def _flip(rng: random.Random, event: dict[str, Any]) -> bytes:
    raw = bytearray(orjson.dumps(event))
    for _ in range(rng.choice([1, 1, 2, 8])):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


def _not_an_event(rng: random.Random, event: dict[str, Any]) -> bytes:
    return rng.choice([b"", b" ", b"null", b"[]", b"[1,2]", b"42", b'"text"', b"\xff\xfe", b"{"])


def _unregistered(rng: random.Random, event: dict[str, Any]) -> bytes:
    return orjson.dumps({**event, "device_id": "d9"})


def _valid(rng: random.Random, event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


MUTATIONS: list[Callable[[random.Random, dict[str, Any]], bytes]] = [
    _replace_number, _nan, _nest, _long, _unicode, _wrong_type, _duplicate_key,
    _truncate, _flip, _not_an_event, _unregistered, _valid, _valid, _valid,
]  # fmt: skip


def fuzzed(now: float) -> list[tuple[str, bytes]]:
    """(device id of the topic, value): a quarter of the records sent twice
    (some valid ones become duplicates), the rest mutated or valid."""
    rng = random.Random(SEED)
    records: list[tuple[str, bytes]] = []
    for n in range(RECORDS):
        if records and rng.random() < 0.05:
            records.append(rng.choice(records))  # the same bytes again
            continue
        event = base_event(rng, n, now)
        records.append((event["device_id"], rng.choice(MUTATIONS)(rng, event)))
    return records


async def test_ten_thousand_mutated_records_crash_nothing_and_every_one_is_accounted_for(
    namespace: Namespace, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    k = namespace.settings.kafka
    records = fuzzed(time.time())
    producer = await idempotent_producer(k.bootstrap)
    try:
        await register(producer, namespace, DEVICES)
        worker = namespace.worker().start()
        await worker.wait_ready()
        sends = [
            await producer.send(namespace.device_topic(device_id), value)
            for device_id, value in records
        ]
        for send in sends:
            await send
    finally:
        await producer.stop()

    def taken_in() -> dict[str, Any] | None:
        assert worker.alive(), f"the worker crashed:\n{worker.log_tail(80)}"
        metrics = worker.metrics() or {}
        return metrics if (metrics.get("ingest") or {}).get("consumed") == RECORDS else None

    ingest = (await wait_for(taken_in, timeout=120, what="every record taken in"))["ingest"]
    metrics = await checkpointed_metrics(worker, ingest["accepted"], timeout=120)
    ingest, actor = metrics["ingest"], metrics["actor"]
    assert worker.alive()

    assert ingest["consumed"] == ingest["accepted"] + ingest["deadlettered"]
    assert ingest["accepted"] == actor["events"] + actor["duplicates"] + actor["late"]
    assert actor["duplicates"] > 0 and ingest["deadlettered"] > 0 and actor["events"] > 0

    letters = await wait_for(
        lambda: _all_letters(k.bootstrap, k.deadletter_topic, ingest["deadlettered"]),
        timeout=60,
        what="every dead letter",
    )
    assert len(letters) == ingest["deadlettered"], "one dead letter per refused record"
    sent = Counter(value for _, value in records)
    kept = Counter(base64.b64decode(letter["original_b64"]) for letter in letters)
    assert not kept - sent, "every dead letter holds bytes exactly as sent"
    assert {letter["reason_code"] for letter in letters} <= REASON_CODES
    assert "internal" not in {letter["reason_code"] for letter in letters}, "no inspector bug"
    assert all(letter["reason"] for letter in letters)
    print(
        f"{RECORDS} records: {actor['events']} processed, {actor['duplicates']} duplicates, "
        f"{actor['late']} late, {ingest['deadlettered']} dead-lettered "
        f"{dict(Counter(letter['reason_code'] for letter in letters))}"
    )


async def _all_letters(bootstrap: str, topic: str, expected: int) -> list[dict[str, Any]] | None:
    letters = [orjson.loads(r.value) for r in await read_all(bootstrap, topic)]
    return letters if len(letters) >= expected else None

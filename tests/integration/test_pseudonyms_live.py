"""Pseudonymised actions against the real broker and Cassandra: with
``privacy.pseudonymise_actions`` the actions downstream systems receive name
no customer or device, the action log is kept under the pseudonyms (and read
and erased by real id), and a worker without the key refuses to start."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from engine.actions import action_schema
from engine.pseudonyms import Pseudonyms
from engine.store.cassandra import CassandraStore
from loadtest.harness import wait_for
from tests.integration.kit import Namespace, read_all, register, send_json
from tests.integration.live_helpers import iotcrm

#: Ids no hex digit string can contain, so a pseudonym cannot look like one.
OWNERS = {"dev-one": "cust-one", "dev-two": "cust-two"}

RULE = """\
- id: hot-device
  version: 1
  key: device
  when:
    condition: "event.kind == 'telemetry' and event.temperature > 80"
  action:
    type: support_case
    payload:
      device: "{{ event.device_id }}"
      reason: "{{ event.device_id }} of {{ customer.customer_id }} runs hot"
"""


async def test_actions_carry_pseudonyms_and_the_log_still_answers_by_real_id(
    namespace: Namespace, producer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "hot.yaml").write_text(RULE)
    key = secrets.token_urlsafe(32)
    monkeypatch.setenv("IOTCRM_PSEUDONYM_KEY", key)  # this process's store reads it too
    namespace.env.update(
        {
            "IOTCRM_RULES_PATH": str(rules),
            "IOTCRM_PRIVACY_PSEUDONYMISE_ACTIONS": "true",
            "IOTCRM_PSEUDONYM_KEY": key,
        }
    )
    names = Pseudonyms(key.encode())
    k = namespace.settings.kafka
    await register(producer, namespace, {d: (c, "washer") for d, c in OWNERS.items()})
    worker = namespace.worker().start()
    await worker.wait_ready()
    now = time.time() - 60
    for i, device_id in enumerate(OWNERS):
        event = {"id": f"e{i}", "ts": now + i, "device_id": device_id, "kind": "telemetry",
                 "temperature": 90.0}  # fmt: skip
        await send_json(producer, namespace.device_topic(device_id), None, event)

    topic = namespace.action_topic("support_case")

    async def published() -> list[Any] | None:
        records = await read_all(k.bootstrap, topic)
        return records if len(records) >= 2 else None

    records = await wait_for(published, timeout=60, what="both customers' actions")
    by_device = {names.of(d): (d, c) for d, c in OWNERS.items()}
    for record in records:
        action = orjson.loads(record.value)
        jsonschema.validate(action, action_schema())
        device_id, customer_id = by_device[action["device_id"]]
        assert action["customer_id"] == names.of(customer_id) == record.key.decode()
        assert action["payload"] == {
            "device": names.of(device_id),
            "reason": f"{names.of(device_id)} of {names.of(customer_id)} runs hot",
        }
        for identifier in (*OWNERS, *OWNERS.values()):
            assert identifier.encode() not in record.value, record.value

    store = CassandraStore(namespace.settings)
    await store.connect()
    try:
        await wait_for(lambda: _counts(store), timeout=60, what="both actions in the action log")
        (logged,) = await store.read_actions("cust-one")  # by the real id
        assert logged["customer_id"] == names.of("cust-one")
        erased = iotcrm("customer", "erase", "cust-one", "--timeout", "50", env=namespace.env)
        assert erased.returncode == 0, erased.stderr
        assert orjson.loads(erased.stdout)["rows_deleted"]["action_log"] == 1
        assert await store.count_actions("cust-one") == 0
        assert await store.count_actions("cust-two") == 1
    finally:
        await store.close()

    without_key = {**namespace.env, "IOTCRM_PSEUDONYM_KEY": ""}
    refused = iotcrm("worker", "--no-setup", env=without_key)
    assert refused.returncode == 2
    assert "IOTCRM_PSEUDONYM_KEY" in refused.stderr


async def _counts(store: CassandraStore) -> bool:
    return [await store.count_actions(c) for c in OWNERS.values()] == [1, 1]

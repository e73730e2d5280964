"""Keyed pseudonyms of the ids in published actions (privacy.pseudonymise_actions)."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from engine.actions import action_schema
from engine.actor import CustomerActor
from engine.config import ConfigError, load_settings
from engine.pseudonyms import Pseudonyms, pseudonyms_for
from engine.quality import StreamHygiene
from engine.rules import RuleEngine, load_ruleset
from tables.state import new_customer_state

KEY = b"0123456789abcdef-test-key"


def action(**changes: object) -> dict:
    body = {
        "schema_version": 1, "action_id": "f" * 32, "type": "support_case",
        "customer_id": "cust-1", "device_id": "cust-1-dev", "rule": {"id": "r", "version": 1},
        "at": 10.0, "emitted_at": 11.0,
        "payload": {"device": "cust-1-dev", "lines": ["cust-1-dev of cust-1", 3], "n": 2},
        "evidence": {"trigger": "condition", "event_ids": ["cust-1-dev-7", 8], "scores": {}},
    }  # fmt: skip
    return {**body, **changes}


def test_a_published_action_names_no_id_and_keeps_its_contract() -> None:
    names = Pseudonyms(KEY)
    original = action()

    published = names.action(original)

    jsonschema.validate(published, action_schema())
    assert published["customer_id"] == names.of("cust-1")
    assert published["device_id"] == names.of("cust-1-dev")
    # the device id contains the customer's: replaced whole, not in part
    assert published["payload"] == {
        "device": names.of("cust-1-dev"),
        "lines": [f"{names.of('cust-1-dev')} of {names.of('cust-1')}", 3],
        "n": 2,
    }
    assert published["evidence"]["event_ids"] == [f"{names.of('cust-1-dev')}-7", 8]
    assert "cust-1" not in repr(published)
    assert original == action(), "the customer's own copy is not changed"
    assert re.fullmatch("[0-9a-f]{32}", published["action_id"])
    assert published["action_id"] != original["action_id"]
    assert names.action(action())["action_id"] == published["action_id"], "still idempotent"


def test_pseudonyms_depend_on_the_key_and_need_a_long_one() -> None:
    assert Pseudonyms(KEY).of("cust-1") != Pseudonyms(KEY + b"!").of("cust-1")
    assert Pseudonyms(KEY).action(action(device_id=None))["device_id"] is None
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonyms(b"short")


def test_the_setting_asks_for_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    off = load_settings(path=None, environ={})
    on = load_settings(path=None, environ={"IOTCRM_PRIVACY_PSEUDONYMISE_ACTIONS": "true"})
    monkeypatch.delenv("IOTCRM_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("IOTCRM_PSEUDONYM_KEY_FILE", raising=False)
    assert pseudonyms_for(off) is None
    with pytest.raises(ConfigError, match="IOTCRM_PSEUDONYM_KEY"):
        pseudonyms_for(on)
    monkeypatch.setenv("IOTCRM_PSEUDONYM_KEY", "too short")
    with pytest.raises(ConfigError, match="16 bytes"):
        pseudonyms_for(on)
    key_file = tmp_path / "key"
    key_file.write_text(KEY.decode() + "\n")
    monkeypatch.delenv("IOTCRM_PSEUDONYM_KEY")
    monkeypatch.setenv("IOTCRM_PSEUDONYM_KEY_FILE", str(key_file))
    names = pseudonyms_for(on)
    assert names is not None and names.of("cust-1") == Pseudonyms(KEY).of("cust-1")
    with pytest.raises(Exception, match="unknown field"):
        load_settings(path=None, environ={"IOTCRM_PRIVACY_PSEUDONYM_KEY": "in settings"})


def test_the_actor_publishes_pseudonyms_and_keeps_real_ids_in_the_state(tmp_path: Path) -> None:
    rules = tmp_path / "hot.yaml"
    rules.write_text(
        """
- id: hot
  version: 1
  key: device
  when: {condition: "event.temperature > 80"}
  action: {type: support_case, payload: {device: "{{ event.device_id }}"}}
"""
    )
    settings = load_settings(path=None, environ={})
    names = Pseudonyms(KEY)
    actor = CustomerActor(
        RuleEngine(load_ruleset(rules)), StreamHygiene(settings.quality), pseudonyms=names
    )
    state = new_customer_state("cust-1")
    event = {"id": "e1", "ts": 100.0, "device_id": "dev-9", "customer_id": "cust-1",
             "device_type": "washer", "kind": "telemetry", "temperature": 90.0}  # fmt: skip

    ((_topic, published),) = actor.handle_events(state, [event], None, 0.0).actions

    assert published["customer_id"] == names.of("cust-1")
    assert published["payload"] == {"device": names.of("dev-9")}
    assert state.devices["dev-9"].last_action_at == {"support_case": 100.0}
    assert state.customer_id == "cust-1"

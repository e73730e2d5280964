"""DeviceRegistry and CustomerProfiles: views of compacted topics."""

from __future__ import annotations

import msgspec

from engine.quality import CustomerProfiles, DeviceInfo, DeviceRegistry

WASHER = b'{"device_id": "d1", "customer_id": "c1", "device_type": "washer",'
WASHER += b' "model": "WX-200", "registered_at": 1763700000}'


def test_records_register_update_and_tombstones_unregister() -> None:
    registry = DeviceRegistry()
    assert registry.apply(b"d1", WASHER) is None
    assert registry.lookup("d1") == DeviceInfo(
        device_id="d1",
        customer_id="c1",
        device_type="washer",
        model="WX-200",
        registered_at=1763700000.0,
    )
    moved = b'{"device_id": "d1", "customer_id": "c2", "device_type": "washer"}'
    assert registry.apply("d1", moved) is None
    assert registry.lookup("d1").customer_id == "c2"  # type: ignore[union-attr]
    assert registry.apply(b"d1", None) is None
    assert registry.lookup("d1") is None and len(registry) == 0
    assert registry.apply(b"d-never-seen", None) is None


def test_an_invalid_record_unregisters_and_says_why() -> None:
    registry = DeviceRegistry(topic="reg")
    registry.apply(b"d1", WASHER)
    assert registry.apply(b"d1", b'{"device_id": "d1", "customer_id": ""}') == (
        "reg record for 'd1' is not valid: Expected `str` of length >= 1 - at `$.customer_id`"
    )
    assert registry.lookup("d1") is None


def test_key_and_value_must_name_the_same_device() -> None:
    registry = DeviceRegistry()
    assert registry.apply(b"d2", WASHER) == (
        "iot.registry record for 'd2' is not valid: its device_id is 'd1'"
    )
    assert registry.lookup("d1") is None and registry.lookup("d2") is None


def test_device_ids_in_the_registry_follow_the_event_contract() -> None:
    registry = DeviceRegistry()
    reason = registry.apply(
        b"d 1", b'{"device_id": "d 1", "customer_id": "c1", "device_type": "washer"}'
    )
    assert reason is not None and "$.device_id" in reason
    assert registry.lookup("d 1") is None


def test_garbage_never_raises() -> None:
    registry = DeviceRegistry()
    for key, value in [
        (b"\xff", WASHER),
        (None, WASHER),
        (b"d1", b"not json"),
        (b"d1", b"[]"),
        (b"d1", b'{"device_id": "d1", "customer_id": "c1", "device_type": "\xff"}'),
        (b"d1", b"[" * 5000),
    ]:
        assert isinstance(registry.apply(key, value), str)
    assert len(registry) == 0


def test_profiles_keep_extra_fields_and_normalise_consent() -> None:
    profiles = CustomerProfiles()
    record = {
        "customer_id": "c1",
        "tier": "gold",
        "segment": "family",
        "region": "EU",
        "lifetime_value": 1200.5,
        "consent": {"marketing": True, "service": False},
    }
    assert profiles.apply(b"c1", msgspec.json.encode(record)) is None
    assert profiles.lookup("c1") == record
    assert profiles.consents("c1", "marketing") is True
    assert profiles.consents("c1", "service") is False
    assert profiles.consents("c1", "research") is False
    assert profiles.consents("c-unknown", "marketing") is False


def test_profile_defaults_mean_no_consent() -> None:
    profiles = CustomerProfiles()
    assert profiles.apply("c1", b'{"customer_id": "c1"}') is None
    assert profiles.lookup("c1") == {
        "customer_id": "c1",
        "tier": "",
        "segment": "",
        "region": "",
        "consent": {},
    }
    assert profiles.consents("c1", "marketing") is False


def test_invalid_profiles_are_removed_with_a_reason() -> None:
    profiles = CustomerProfiles()
    profiles.apply(b"c1", b'{"customer_id": "c1"}')
    reason = profiles.apply(b"c1", b'{"customer_id": "c1", "consent": {"marketing": "yes"}}')
    assert reason == (
        "crm.customers record for 'c1' is not valid: "
        "Expected `bool`, got `str` - at `$.consent[...]`"
    )
    assert profiles.lookup("c1") is None
    assert profiles.apply(b"c1", b'{"customer_id": "c2"}') == (
        "crm.customers record for 'c1' is not valid: its customer_id is 'c2'"
    )
    assert profiles.apply(b"c1", None) is None and len(profiles) == 0

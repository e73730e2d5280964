"""The local Kafka's cluster id never reads as an option to its storage tool."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _services_module():
    path = REPO / "deploy" / "local" / "services.py"
    spec = importlib.util.spec_from_file_location("local_services", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_cluster_id_starting_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _services_module()
    draws: Iterator[bytes] = iter([b"\xfb" + bytes(15), b"\x00" * 16])  # "-w..." then "AAAA..."
    monkeypatch.setattr(services.os, "urandom", lambda size: next(draws))
    assert services._kafka_cluster_id() == "A" * 22


def test_cluster_ids_are_22_url_safe_characters() -> None:
    services = _services_module()
    ids = {services._kafka_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)

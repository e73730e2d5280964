from __future__ import annotations

import pytest

from engine.quality import DeviceRegistry, Inspector, QualityOptions

from .helpers import NOW, make_registry


@pytest.fixture
def registry() -> DeviceRegistry:
    return make_registry()


@pytest.fixture
def inspector(registry: DeviceRegistry) -> Inspector:
    return Inspector(QualityOptions(max_payload_bytes=4096), registry, clock=lambda: NOW)

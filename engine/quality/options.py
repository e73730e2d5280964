"""The knobs of the data-quality layer: the ``[quality]`` settings
(``engine.config.QualitySettings``, defined once, each field documented there),
under the name the quality layer uses.

>>> options = QualityOptions(allowed_lateness_s=5.0)
>>> options.allowed_lateness_s, options.max_payload_bytes
(5.0, 65536)
>>> options.expected_interval("vehicle")
300.0
"""

from __future__ import annotations

from engine.config import QualitySettings as QualityOptions

__all__ = ["QualityOptions"]

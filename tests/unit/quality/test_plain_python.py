"""The quality layer is plain Python: importing it pulls in no broker client."""

from __future__ import annotations

import subprocess
import sys


def test_importing_quality_loads_no_faust_kafka_or_cassandra() -> None:
    probe = (
        "import sys, engine.quality, engine.events\n"
        "heavy = sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'faust', 'mode', 'aiokafka', 'cassandra', 'river'})\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""

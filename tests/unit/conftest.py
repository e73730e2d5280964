"""The load tests' ``iotcrm`` commands in this checkout, installed or not.

``iotcrm simulate``, ``demo``, ``bench`` ... reach the CLI only through the
``iotcrm.commands`` entry points of the load-test distribution
(``loadtest/pyproject.toml``). ``make install`` installs it; a virtualenv
installed before it existed, or one that runs this checkout from
``PYTHONPATH``, has no such metadata, and the unit tests would then miss the
commands they test. For those, the entry points declared in the checkout are
put on ``sys.path`` as a minimal ``dist-info``, so the CLI finds them by its
ordinary discovery; an installed distribution of the same name comes first.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from importlib import invalidate_caches
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest" / "pyproject.toml"


@pytest.fixture(autouse=True, scope="session")
def loadtest_entry_points(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    project = tomllib.loads(LOADTEST.read_text())["project"]
    try:
        distribution(project["name"])
    except PackageNotFoundError:
        pass
    else:
        yield
        return
    info = tmp_path_factory.mktemp("metadata") / f"iotcrm_loadtest-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, points in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    sys.path.append(str(info.parent))
    invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(info.parent))
        invalidate_caches()

"""Online-learning models on River, declared in YAML (see docs/models.md).

Plain Python: no Faust, Kafka or Cassandra here. The live customer actor and
``iotcrm models backtest`` call the same methods:

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "models.yaml"
>>> _ = path.write_text('''
... - name: anomaly
...   kind: anomaly
...   pipeline: MinMaxScaler | HalfSpaceTrees(n_trees=5, height=4, window_size=10, seed=42)
...   features: [event.vibration, event.temperature]
... ''')
>>> models = load_models(path)
>>> models.process({"id": "e1", "ts": 0, "vibration": 0.2, "temperature": 40.0},
...                customer={}, device={})
{'anomaly': 0.0}
>>> models.metrics()["anomaly"]["n"]
1
"""

from engine.models.errors import ModelConfigError
from engine.models.modelset import ModelSet, load_models
from engine.models.snapshot import SnapshotError
from engine.models.spec import ModelSpec

__all__ = ["ModelConfigError", "ModelSet", "ModelSpec", "SnapshotError", "load_models"]

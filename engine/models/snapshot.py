"""Snapshot bytes: a format version, then a pickle that may only name known classes.

Pickle is used because River's estimators are plain Python objects and it is
the fastest faithful copy of them. A snapshot is our own state, never user
input, but loading still goes through an allowlist of globals (River and
this package's classes, a few containers), so a tampered or foreign blob
raises :class:`SnapshotError` instead of running code.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

#: Bumped whenever the layout of the snapshotted state changes.
FORMAT_VERSION = 1
_MAGIC = b"iotcrm-models\x00"


class SnapshotError(ValueError):
    """The bytes are not a model snapshot this version can read."""


def dumps(state: dict[str, Any]) -> bytes:
    header = _MAGIC + FORMAT_VERSION.to_bytes(2, "big")
    return header + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def loads(blob: bytes) -> dict[str, Any]:
    if not blob.startswith(_MAGIC):
        raise SnapshotError("not a model snapshot")
    version = int.from_bytes(blob[len(_MAGIC) : len(_MAGIC) + 2], "big")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format {version}, this version reads {FORMAT_VERSION}")
    body = blob[len(_MAGIC) + 2 :]
    try:
        state = _Unpickler(io.BytesIO(body)).load()
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"corrupt model snapshot: {exc}") from exc
    if not isinstance(state, dict):
        raise SnapshotError("corrupt model snapshot: not a mapping")
    return state


def _safe_getattr(obj: Any, name: str) -> Any:
    """Bound methods pickle as ``getattr(obj, name)``; dunder names could reach
    ``__globals__`` and from there anything, so they are refused."""
    if not isinstance(name, str) or name.startswith("__"):
        raise SnapshotError(f"snapshot refers to attribute {name!r}")
    return getattr(obj, name)


#: Modules whose classes a snapshot may contain.
_CLASS_MODULES = (
    "engine.models.",
    "river._river_rust.",
    "river.anomaly.",
    "river.compose.pipeline",
    "river.drift.",
    "river.forest.",
    "river.linear_model.",
    "river.metrics.",
    "river.multiclass.",
    "river.naive_bayes.",
    "river.optim.",
    "river.preprocessing.",
    "river.proba.",
    "river.stats.",
    "river.tree.",
)

#: Other globals a snapshot may contain (functions used as factories, containers).
_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        ("builtins", kind.__name__): kind
        for kind in (
            bool,
            int,
            float,
            complex,
            str,
            bytes,
            tuple,
            list,
            dict,
            set,
            frozenset,
            slice,
        )
    },
    ("builtins", "getattr"): _safe_getattr,
    ("collections", "Counter"): None,
    ("collections", "OrderedDict"): None,
    ("collections", "defaultdict"): None,
    ("collections", "deque"): None,
    ("functools", "partial"): None,
    ("random", "Random"): None,
    ("statistics", "NormalDist"): None,
    ("copyreg", "_reconstructor"): None,
    ("river.naive_bayes.gaussian", "GaussianNB._make_gaussian"): None,
    ("river.tree.splitter.ebst_splitter", "EBSTNode._update_estimator_univariate"): None,
    ("numpy", "dtype"): None,
    ("numpy", "ndarray"): None,
    ("numpy._core.multiarray", "scalar"): None,
    ("numpy._core.multiarray", "_reconstruct"): None,
    ("numpy._core.numeric", "_frombuffer"): None,
    ("numpy.core.multiarray", "scalar"): None,
    ("numpy.core.multiarray", "_reconstruct"): None,
    ("numpy.core.numeric", "_frombuffer"): None,
    ("numpy.random._pickle", "__bit_generator_ctor"): None,
    ("numpy.random._pickle", "__randomstate_ctor"): None,
    ("numpy.random._pickle", "__generator_ctor"): None,
    ("numpy.random._mt19937", "MT19937"): None,
    ("numpy.random._pcg64", "PCG64"): None,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            replacement = _GLOBALS[(module, name)]
            return replacement if replacement is not None else super().find_class(module, name)
        if module.startswith(_CLASS_MODULES) and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise SnapshotError(f"snapshot refers to {module}.{name}, which is not allowed")

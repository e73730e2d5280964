from __future__ import annotations

import textwrap

from engine.models import ModelSet
from engine.models.spec import parse_models


def model_set(yaml_text: str) -> ModelSet:
    """A ModelSet from an inline YAML declaration."""
    return ModelSet(parse_models(textwrap.dedent(yaml_text)))

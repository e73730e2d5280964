"""The one error a model declaration can raise."""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A model file is invalid; ``str(error)`` reads ``file:line:col: message``.

    Line and column are 1-based and point at the offending YAML node (or into
    the pipeline text). Either may be 0 when the position is unknown.

    >>> str(ModelConfigError("unknown estimator 'Foo'", file="models.yaml", line=3, col=15))
    "models.yaml:3:15: unknown estimator 'Foo'"
    """

    def __init__(self, message: str, *, file: str = "", line: int = 0, col: int = 0) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<models>"
        return f"{where}:{self.line}:{self.col}: {self.message}"

"""Errors of rule files, each with the file, line and column it is about."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rule file, at a 1-based line and column.

    >>> str(RuleError("rules/a.yaml", 3, 14, "unknown name 'evnt'"))
    "rules/a.yaml:3:14: unknown name 'evnt'"
    """

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class RuleFileError(Exception):
    """Rule files that cannot be loaded; ``errors`` lists every problem found."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))

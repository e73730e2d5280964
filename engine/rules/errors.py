"""Problems in rule files, each with the file, line and column it is about, a
stable code and a severity.

An **error** refuses the file set: nothing loads. A **warning** points at
something that is probably a mistake but may be meant (an event field no
device is known to send): the rules load and the warnings are reported with
them (:attr:`RuleSet.warnings <engine.rules.model.RuleSet>`). Codes never
change meaning, so tools and people can grep and filter by them; each is
documented in docs/rules.md ("Error codes").

>>> error = RuleError("rules/a.yaml", 3, 14, "R202", "unknown name 'evnt'")
>>> str(error)
"rules/a.yaml:3:14: error[R202]: unknown name 'evnt'"
>>> error.severity, CODES["W101"].severity
('error', 'warning')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Code:
    """A kind of problem: its severity and what it covers."""

    severity: Severity
    summary: str


#: Every code a rule problem may carry. R0: reading files, R1: the structure
#: of rules, R2: expressions and templates, R3: triggers, R4: embedded tests;
#: W1: fields of event and customer (warnings).
CODES: dict[str, Code] = {
    "R001": Code("error", "no such file or folder"),
    "R002": Code("error", "the file cannot be read (permissions, not UTF-8)"),
    "R003": Code("error", "invalid YAML, or a key given twice in one mapping"),
    "R004": Code(
        "error",
        "not a rule file: neither a list of rules nor 'rules: [...]', "
        "or a rule that is not a mapping",
    ),
    "R101": Code("error", "unknown key"),
    "R102": Code("error", "a required key is missing"),
    "R103": Code("error", "a value of the wrong type"),
    "R104": Code("error", "a value that is not one of the allowed ones"),
    "R105": Code(
        "error", "an invalid value: rule id, negative version, empty group or topic, consent name"
    ),
    "R106": Code("error", "a rule id used twice (also across files)"),
    "R107": Code("error", "an invalid duration, or zero where it must be longer"),
    "R108": Code("error", "an invalid timestamp in a test"),
    "R201": Code(
        "error", "an expression that does not parse: syntax, empty, too long, nested too deeply"
    ),
    "R202": Code("error", "an unknown name"),
    "R203": Code("error", "an unknown function, or a call of something else"),
    "R204": Code("error", "wrong arguments to a function"),
    "R205": Code(
        "error",
        "a construct the language does not allow (dunder names, lambdas, "
        "comprehensions, slices, bit operators, ...)",
    ),
    "R206": Code("error", "a field that cannot exist: an undeclared window.<name>, a field of now"),
    "R207": Code("error", "a constant part of an expression that fails when computed"),
    "R208": Code(
        "error",
        "a comparison with None that is always false, or 'is' with something else than None",
    ),
    "R301": Code("error", "'when' without exactly one trigger"),
    "R302": Code("error", "a window option that does not fit the window's type"),
    "R303": Code("error", "an invalid window aggregate"),
    "R304": Code("error", "invalid sequence steps: none, or a bad, reserved or repeated name"),
    "R401": Code("error", "a test's 'scores' do not match its events one to one"),
    "W101": Code("warning", "an event field that is not part of the event contract"),
    "W102": Code("warning", "a customer field neither in the CRM profile nor in the worker's view"),
}


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rule file, at a 1-based line and column, shown as
    ``file:line:col: severity[code]: message``."""

    file: str
    line: int
    col: int
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"undocumented rule error code {self.code!r}")

    @property
    def severity(self) -> Severity:
        return CODES[self.code].severity

    def as_dict(self) -> dict[str, Any]:
        """The problem as JSON-ready data (``iotcrm rules validate --format json``)."""
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}[{self.code}]: {self.message}"


class RuleFileError(Exception):
    """Rule files that cannot be loaded: ``errors`` lists every error found,
    ``warnings`` the warnings found with them, ``files`` the files read."""

    def __init__(
        self,
        errors: list[RuleError],
        warnings: list[RuleError] | None = None,
        files: list[str] | None = None,
    ) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        self.files = list(files or [])
        super().__init__("\n".join(str(error) for error in self.errors))

"""Hot reload of rule files: notice a change, compile, swap, or refuse and keep.

``poll()`` is cheap (a stat of each rule file); it compiles only when a file
was added, removed or changed. A change that does not compile is refused: its
errors are logged as ``file:line:col: error[CODE]: message`` and kept for the
health view, and the rules in force stay in force. The warnings of rules that
load are logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from engine.rules import RuleFileError, load_ruleset

log = logging.getLogger(__name__)

RULE_SUFFIXES = (".yaml", ".yml")


class RulesWatcher:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self.loaded_at: float | None = None
        self.rule_count = 0
        self.errors: list[str] = []
        self.reloads = 0

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.suffix in RULE_SUFFIXES)

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        stamps = []
        for file in self._files():
            try:
                stat = file.stat()
            except FileNotFoundError:
                continue  # removed between listing and stat: the next poll sees it
            stamps.append((str(file), stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def load_initial(self) -> Any:
        """Compile the rules a worker starts with; errors stop the start."""
        self._fingerprint = self.fingerprint()
        ruleset = load_ruleset(self.path)
        self._loaded(ruleset)
        return ruleset

    def poll(self) -> Any | None:
        """The new rule set if the files changed and compile, else None."""
        fingerprint = self.fingerprint()
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            ruleset = load_ruleset(self.path)
        except RuleFileError as exc:
            self.errors = [str(error) for error in exc.errors]
            for line in self.errors:
                log.error("rule change refused, previous rules stay in force: %s", line)
            return None
        self._loaded(ruleset)
        self.reloads += 1
        log.info("rules reloaded from %s: %d rules", self.path, self.rule_count)
        return ruleset

    def _loaded(self, ruleset: Any) -> None:
        self.loaded_at = time.time()
        self.rule_count = len(ruleset.rules)
        self.errors = []
        # Warnings do not stop rules: said once per load, where operators look.
        for warning in ruleset.warnings:
            log.warning("rules loaded with a warning: %s", warning)

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "rules": self.rule_count,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "refused_change_errors": self.errors,
        }

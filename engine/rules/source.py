"""Rule files as YAML with positions: load with ruamel.yaml's round-trip loader,
which keeps the line and column of every key, value and list item, and map an
offset inside a scalar (an expression) back to its line and column in the file.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from engine.rules.errors import RuleError

Position = tuple[int, int]  # 0-based line and column, as ruamel reports them


class SourceFile:
    """The text of one rule file, to turn positions into ``RuleError`` s."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.line_starts = [0]
        for index, char in enumerate(text):
            if char == "\n":
                self.line_starts.append(index + 1)

    def error(self, position: Position | None, code: str, message: str) -> RuleError:
        line, col = position if position is not None else (0, 0)
        return RuleError(self.path, line + 1, col + 1, code, message)

    def index(self, position: Position) -> int:
        line, col = position
        if line >= len(self.line_starts):
            return len(self.text)
        return min(self.line_starts[line] + col, len(self.text))

    def position(self, index: int) -> Position:
        line = bisect.bisect_right(self.line_starts, index) - 1
        return line, index - self.line_starts[line]

    def locate(self, anchor: Position | None, value: str, offset: int) -> Position | None:
        """The file position of character ``offset`` of the scalar ``value``
        that starts at ``anchor``.

        Quotes, block-scalar indentation and folding mean the scalar's text is
        not a plain copy of the file, so the token at ``offset`` is searched
        for in the file from ``anchor`` on, counting earlier occurrences of the
        same token inside the value.

        >>> text = "when:\\n  condition: |\\n    event.x > 1\\n      and evnt.y\\n"
        >>> src = SourceFile("r.yaml", text)
        >>> src.locate((1, 13), "event.x > 1\\n  and evnt.y\\n", 18)
        (3, 10)
        """
        if anchor is None:
            return None
        offset = max(0, min(offset, len(value)))
        start = self.index(anchor)
        token = _token_at(value, offset)
        shift = 0
        if not token:
            before = value[:offset].rstrip()
            if not before:
                return anchor
            token = before.split()[-1][-24:]
            shift = len(token) + (offset - len(before))
            offset = len(before) - len(token)
        earlier = _count_starts(value, token, offset)
        found = start - 1
        for _ in range(earlier + 1):
            found = self.text.find(token, found + 1)
            if found < 0:
                return anchor
        return self.position(found + shift)


def _token_at(value: str, offset: int) -> str:
    end = offset
    while end < len(value) and not value[end].isspace() and end - offset < 24:
        end += 1
    return value[offset:end]


def _count_starts(value: str, token: str, limit: int) -> int:
    count = 0
    found = value.find(token)
    while 0 <= found < limit:
        count += 1
        found = value.find(token, found + 1)
    return count


def key_position(mapping: Any, key: str) -> Position | None:
    try:
        return tuple(mapping.lc.key(key))
    except (AttributeError, KeyError, TypeError):
        return node_position(mapping)


def value_position(mapping: Any, key: str) -> Position | None:
    try:
        return tuple(mapping.lc.value(key))
    except (AttributeError, KeyError, TypeError):
        return key_position(mapping, key)


def item_position(sequence: Any, index: int) -> Position | None:
    try:
        return tuple(sequence.lc.item(index))
    except (AttributeError, KeyError, TypeError, IndexError):
        return node_position(sequence)


def node_position(node: Any) -> Position | None:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return None
    return lc.line, lc.col


def load_yaml(path: str | Path) -> tuple[Any, SourceFile, list[RuleError]]:
    """Parse ``path``; on failure the data is ``None`` and the error is listed."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        source = SourceFile(name, "")
        return None, source, [source.error(None, "R002", f"cannot read rule file: {exc}")]
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str) -> tuple[Any, SourceFile, list[RuleError]]:
    """Parse YAML ``text`` (named ``name`` in errors)."""
    source = SourceFile(name, text)
    yaml = YAML(typ="rt", pure=True)
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = (mark.line, mark.column) if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        return None, source, [source.error(position, "R003", f"YAML: {problem}")]
    except YAMLError as exc:
        return None, source, [source.error(None, "R003", f"YAML: {exc}")]
    return data, source, []


def to_plain(value: Any) -> Any:
    """ruamel's round-trip types as plain Python data (dict, list, str, int,
    float, bool, None; timestamps as epoch seconds)."""
    if isinstance(value, CommentedMap | Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, CommentedSeq | list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return bool(value) if value is not None else None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dt.datetime):
        return epoch_seconds(value)
    if isinstance(value, dt.date):
        return epoch_seconds(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC))
    return value


def epoch_seconds(moment: dt.datetime) -> float:
    """Epoch seconds of ``moment``; a moment without a zone is UTC."""
    tzinfo = moment.tzinfo
    if tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    offset = tzinfo.utcoffset(moment) if tzinfo is not None else None
    naive = moment.replace(tzinfo=None)
    seconds = (naive - dt.datetime(1970, 1, 1)).total_seconds()
    return seconds - (offset.total_seconds() if offset else 0.0)


def parse_timestamp(value: Any) -> float:
    """Event time as epoch seconds from a number or an RFC 3339 string.

    >>> parse_timestamp("1970-01-01T00:10:00Z")
    600.0
    >>> parse_timestamp(12)
    12.0
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid timestamp {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        return epoch_seconds(value)
    if isinstance(value, str):
        try:
            return epoch_seconds(dt.datetime.fromisoformat(value.strip()))
        except ValueError:
            pass
    raise ValueError(f"invalid timestamp {value!r}: use epoch seconds or RFC 3339")

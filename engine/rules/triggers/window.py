"""``window``: aggregates over sliding, tumbling, hopping and session windows."""

from __future__ import annotations

import ast
import bisect
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from engine.rules.aggregates import AGGREGATORS, OPTIONAL_ARGUMENT, Aggregate
from engine.rules.checks import MISSING, NAME
from engine.rules.expr import EMPTY, Expression, Scope
from engine.rules.runtime import MAX_EVIDENCE_IDS, Match, append_id
from engine.rules.source import key_position, value_position
from engine.rules.triggers.base import Trigger

if TYPE_CHECKING:
    from engine.rules.checks import Checker
    from engine.rules.model import Rule
    from engine.rules.runtime import Run

_NUMBER = (int, float, bool)

WINDOW_TYPES = ("sliding", "tumbling", "hopping", "session")

# A sliding entry is [ts, seq, event_id, value per aggregate...].
_TS, _SEQ, _ID, _VALUES = 0, 1, 2, 3
# An open tumbling/hopping window is [start, end, accs, ids, count, event, scores];
# a session is [start, last, accs, ids, count, event, scores].
_START, _END, _ACCS, _IDS, _N, _EVENT, _SCORES = range(7)
_LAST = _END


def _evidence_ids(ids: list[Any]) -> list[Any]:
    if len(ids) <= MAX_EVIDENCE_IDS:
        return list(ids)
    return [ids[0], *ids[len(ids) - MAX_EVIDENCE_IDS + 1 :]]


class WindowTrigger(Trigger):
    """``window: {type, size, advance?, gap?, grace?, filter?, aggregates, having}``.

    - ``sliding``: at time T the window holds events with ts in (T - size, T];
      ``having`` is checked on each event that enters and fires when it turns
      true (re-armed once it was false on an entering event).
    - ``tumbling``: windows [s, s + size) aligned to the epoch;
    - ``hopping``: windows [s, s + size) starting every ``advance``;
    - ``session``: an event less than ``gap`` from a session's events joins
      it (bridging two sessions merges them); one exactly ``gap`` after its
      last event starts a new session.

    Tumbling, hopping and session windows are checked when they close, at
    end + grace (a session ends at last event + gap), by a timer. An event is
    accepted while its window's end > (the key's stream time - grace);
    otherwise it is late: it is reported and changes nothing.
    """

    kind: ClassVar[str] = "window"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "aggregates", "having"],
        "properties": {
            "type": {"enum": list(WINDOW_TYPES)},
            "size": {"$ref": "#/$defs/duration"},
            "advance": {"$ref": "#/$defs/duration"},
            "gap": {"$ref": "#/$defs/duration"},
            "grace": {"$ref": "#/$defs/duration"},
            "filter": {"$ref": "#/$defs/expression"},
            "aggregates": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": NAME.pattern},
                "additionalProperties": {
                    "type": "string",
                    "pattern": r"^\s*(" + "|".join(AGGREGATORS) + r")\s*\(",
                },
            },
            "having": {"$ref": "#/$defs/expression"},
        },
        "allOf": [
            {
                "if": {"properties": {"type": {"const": "session"}}},
                "then": {
                    "required": ["gap"],
                    "not": {"anyOf": [{"required": ["size"]}, {"required": ["advance"]}]},
                },
                "else": {"required": ["size"], "not": {"required": ["gap"]}},
            },
            {
                "if": {"properties": {"type": {"const": "hopping"}}},
                "then": {"required": ["advance"]},
                "else": {"not": {"required": ["advance"]}},
            },
            {
                "if": {"properties": {"type": {"const": "sliding"}}},
                "then": {"not": {"required": ["grace"]}},
            },
        ],
    }

    def __init__(
        self,
        type: str,
        size: float,
        aggregates: list[Aggregate],
        having: Expression,
        *,
        advance: float | None = None,
        gap: float | None = None,
        grace: float = 0.0,
        filter: Expression | None = None,
    ) -> None:
        self.type = type
        self.size = size
        self.advance = advance if advance is not None else size
        self.gap = gap or 0.0
        self.grace = grace
        self.filter = filter
        self.aggregates = aggregates
        self.having = having
        self.aggregates_events = type != "sliding"
        # The rule index checks an exact filter before offering an event.
        self._filter = None if filter is None or filter.exact else filter.evaluate
        self._columns = [
            (
                a.name,
                a.aggregator,
                a.argument.evaluate if a.argument else None,
                a.aggregator.numeric,
            )
            for a in aggregates
        ]
        self._names = frozenset(a.name for a in aggregates)

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        spec = check.mapping(when, cls.kind, "'when'")
        if spec is MISSING:
            return None
        allowed = ("type", "size", "advance", "gap", "grace", "filter", "aggregates", "having")
        check.check_keys(spec, allowed, "'window'")
        window_type = check.choice(spec, "type", WINDOW_TYPES, "'window'", required=True)
        ok = window_type is not MISSING
        size = gap = advance = None
        grace = 0.0
        if window_type == "session":
            gap = check.duration(spec, "gap", "a session window", required=True)
            for unwanted in ("size", "advance"):
                if unwanted in spec:
                    check.error(
                        key_position(spec, unwanted),
                        "R302",
                        f"a session window has no '{unwanted}' (it uses 'gap')",
                    )
                    ok = False
        elif window_type is not MISSING:
            size = check.duration(spec, "size", f"a {window_type} window", required=True)
            if "gap" in spec:
                check.error(key_position(spec, "gap"), "R302", "'gap' is for session windows")
                ok = False
            if window_type == "hopping":
                advance = check.duration(spec, "advance", "a hopping window", required=True)
                if isinstance(advance, float) and isinstance(size, float) and advance > size:
                    check.error(
                        value_position(spec, "advance"),
                        "R302",
                        "'advance' must not be longer than 'size'",
                    )
                    ok = False
            elif "advance" in spec:
                check.error(
                    key_position(spec, "advance"), "R302", "'advance' is for hopping windows"
                )
                ok = False
        if window_type == "sliding" and "grace" in spec:
            check.error(
                key_position(spec, "grace"),
                "R302",
                "'grace' is for tumbling, hopping and session windows",
            )
            ok = False
        elif "grace" in spec:
            grace = check.duration(spec, "grace", "'window'", positive=False)
        filter_ = check.expression(spec, "filter", "'window'", required=False)
        aggregates = _compile_aggregates(check, spec)
        having = check.expression(
            spec, "having", "'window'", window_fields=cls.declared_names(spec)[1]
        )
        if not ok or MISSING in (size, gap, advance, grace, filter_, aggregates, having):
            return None
        return cls(
            str(window_type),
            float(size or 0.0),
            aggregates,
            having,
            advance=advance,
            gap=gap,
            grace=float(grace or 0.0),
            filter=filter_,
        )

    @classmethod
    def declared_names(cls, spec: Any) -> tuple[frozenset[str], frozenset[str]]:
        aggregates = spec.get("aggregates") if isinstance(spec, Mapping) else None
        if not isinstance(aggregates, Mapping):
            return frozenset(), frozenset()
        return frozenset(), frozenset(str(name) for name in aggregates)

    def expressions(self) -> list[Expression]:
        found = [a.argument for a in self.aggregates if a.argument is not None]
        found.append(self.having)
        if self.filter is not None:
            found.append(self.filter)
        return found

    def requirement(self) -> dict[str, frozenset[Any]]:
        return self.filter.requirement if self.filter is not None else {}

    def window_names(self) -> frozenset[str] | None:
        return self._names

    # values -------------------------------------------------------------
    def _values(self, rule: Rule, run: Run) -> list[Any]:
        scope = run.scope
        values: list[Any] = []
        for _name, _aggregator, argument, numeric in self._columns:
            if argument is None:
                values.append(1)
                continue
            try:
                value = argument(scope)
            except Exception:
                rule.errors += 1
                value = None
            if numeric and value is not None and not isinstance(value, _NUMBER):
                rule.errors += 1
                value = None
            values.append(value)
        return values

    def _results(self, accs: list[list[Any]], span: float) -> dict[str, Any]:
        return {
            name: aggregator.result(acc, span)
            for (name, aggregator, _a, _n), acc in zip(self._columns, accs, strict=True)
        }

    # events -------------------------------------------------------------
    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        if self._filter is not None and not run.truth(rule, self._filter, run.scope):
            return
        if self.type == "sliding":
            self._slide(rule, run, event, ts)
        elif self.type == "session":
            self._join_session(rule, run, event, ts)
        else:
            self._assign(rule, run, event, ts)

    def _slide(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        now = run.ks["t"]
        low = now - self.size
        if ts <= low:
            run.mark_late(rule, event, ts)
            return
        state = run.state(rule)
        if state is None:
            state = run.create_state(
                rule,
                {
                    "q": [],
                    "acc": [c[1].new() if c[1].removable else None for c in self._columns],
                    "on": 0,
                },
            )
        entries: list[list[Any]] = state["q"]
        accs: list[Any] = state["acc"]
        values = self._values(rule, run)
        entry = [ts, run.seq, event.get("id"), *values]
        if not entries or ts >= entries[-1][_TS]:
            entries.append(entry)
        else:
            bisect.insort(entries, entry, key=lambda e: (e[_TS], e[_SEQ]))
        for (_name, aggregator, _a, _n), acc, value in zip(
            self._columns, accs, values, strict=True
        ):
            if acc is not None:
                aggregator.add(acc, value, ts, run.seq)
        expired = 0
        while expired < len(entries) and entries[expired][_TS] <= low:
            old = entries[expired]
            for index, ((_name, aggregator, _a, _n), acc) in enumerate(
                zip(self._columns, accs, strict=True)
            ):
                if acc is not None:
                    aggregator.remove(acc, old[_VALUES + index])
            expired += 1
        if expired:
            del entries[:expired]
        results: dict[str, Any] = {}
        for index, ((name, aggregator, _a, _n), acc) in enumerate(
            zip(self._columns, accs, strict=True)
        ):
            results[name] = (
                aggregator.result(acc, self.size)
                if acc is not None
                else aggregator.scan(entries, _VALUES + index, self.size)
            )
        scope = run.scope
        scope.window = results
        try:
            holds = run.truth(rule, self.having.evaluate, scope)
        finally:
            scope.window = EMPTY
        if not holds:
            state["on"] = 0
            return
        if state["on"]:
            return
        state["on"] = 1
        run.out.append(
            Match(
                rule,
                run,
                now,
                _evidence_ids([e[_ID] for e in entries]),
                event=event,
                score=scope.score,
                evidence={
                    "type": "sliding",
                    "start": low,
                    "end": now,
                    "aggregates": results,
                    "events": len(entries),
                },
                bounds=[low, now],
                window=results,
                device_id=event.get("device_id"),
            )
        )

    def _add(
        self,
        rule: Rule,
        run: Run,
        window: list[Any],
        values: list[Any],
        event: Mapping[str, Any],
        ts: float,
    ) -> None:
        for (_name, aggregator, _a, _n), acc, value in zip(
            self._columns, window[_ACCS], values, strict=True
        ):
            aggregator.add(acc, value, ts, run.seq)
        append_id(window[_IDS], event.get("id"))
        window[_N] += 1
        context = window[_EVENT]
        if context is None or ts >= context.get("ts", ts):
            window[_EVENT] = run.project(rule, event)
            window[_SCORES] = rule.project_scores(run.scope.score)

    def _new_window(self, start: float, end: float) -> list[Any]:
        return [start, end, [c[1].new() for c in self._columns], [], 0, None, None]

    def _assign(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        horizon = run.ks["t"] - self.grace
        latest = math.floor(ts / self.advance) * self.advance
        starts = []
        start = latest
        while start + self.size > ts:
            if start + self.size > horizon:
                starts.append(start)
            start -= self.advance
        if not starts:
            run.mark_late(rule, event, ts)
            return
        state = run.state(rule)
        if state is None:
            state = run.create_state(rule, {"w": []})
        windows: list[list[Any]] = state["w"]
        values = self._values(rule, run)
        for start in reversed(starts):
            index = bisect.bisect_left(windows, start, key=lambda w: w[_START])
            if index == len(windows) or windows[index][_START] != start:
                windows.insert(index, self._new_window(start, start + self.size))
            self._add(rule, run, windows[index], values, event, ts)
        run.set_due(rule, windows[0][_END] + self.grace)

    def _join_session(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        gap = self.gap
        state = run.state(rule)
        sessions: list[list[Any]] = state["w"] if state is not None else []
        joined = [i for i, s in enumerate(sessions) if s[_START] - gap < ts < s[_LAST] + gap]
        if not joined and ts + gap <= run.ks["t"] - self.grace:
            run.mark_late(rule, event, ts)
            return
        if state is None:
            state = run.create_state(rule, {"w": sessions})
        if joined:
            target = sessions[joined[0]]
            for index in reversed(joined[1:]):
                self._merge(target, sessions.pop(index))
        else:
            target = [ts, ts, [c[1].new() for c in self._columns], [], 0, None, None]
            index = bisect.bisect_left(sessions, ts, key=lambda s: s[_START])
            sessions.insert(index, target)
        target[_START] = min(target[_START], ts)
        target[_LAST] = max(target[_LAST], ts)
        self._add(rule, run, target, self._values(rule, run), event, ts)
        run.set_due(rule, sessions[0][_LAST] + gap + self.grace)

    def _merge(self, target: list[Any], other: list[Any]) -> None:
        for (_name, aggregator, _a, _n), acc, more in zip(
            self._columns, target[_ACCS], other[_ACCS], strict=True
        ):
            aggregator.merge(acc, more)
        target[_START] = min(target[_START], other[_START])
        target[_LAST] = max(target[_LAST], other[_LAST])
        ids = target[_IDS]
        for event_id in other[_IDS]:
            append_id(ids, event_id)
        target[_N] += other[_N]
        if other[_EVENT] is not None and (
            target[_EVENT] is None or other[_EVENT].get("ts", 0) >= target[_EVENT].get("ts", 0)
        ):
            target[_EVENT], target[_SCORES] = other[_EVENT], other[_SCORES]

    # timers -------------------------------------------------------------
    def on_timer(self, rule: Rule, run: Run, due: float) -> None:
        state = run.state(rule)
        windows: list[list[Any]] = state["w"] if state is not None else []
        session = self.type == "session"
        while windows:
            window = windows[0]
            end = window[_LAST] + self.gap if session else window[_END]
            closes = end + self.grace
            if closes > due:
                break
            windows.pop(0)
            self._close(rule, run, window, window[_START], end, closes)
        if windows:
            first = windows[0]
            end = first[_LAST] + self.gap if session else first[_END]
            run.set_due(rule, end + self.grace)
        else:
            run.drop_state(rule)

    def _close(
        self, rule: Rule, run: Run, window: list[Any], start: float, end: float, closes: float
    ) -> None:
        results = self._results(window[_ACCS], end - start)
        context = window[_EVENT] or EMPTY
        scope = Scope(context, run.customer, run.device, window[_SCORES], closes, results)
        if not run.truth(rule, self.having.evaluate, scope):
            return
        run.out.append(
            Match(
                rule,
                run,
                closes,
                _evidence_ids(window[_IDS]),
                event=context,
                score=window[_SCORES],
                evidence={
                    "type": self.type,
                    "start": start,
                    "end": end,
                    "aggregates": results,
                    "events": window[_N],
                },
                bounds=[start, end],
                window=results,
                device_id=context.get("device_id") if run.key_kind == "device" else None,
            )
        )


def _compile_aggregates(check: Checker, spec: Any) -> Any:
    node = check.mapping(spec, "aggregates", "'window'", required=True)
    if node is MISSING:
        return MISSING
    if not node:
        check.error(value_position(spec, "aggregates"), "R303", "'aggregates' needs at least one")
        return MISSING
    aggregates: list[Aggregate] = []
    ok = True
    for name, text in node.items():
        if not isinstance(name, str) or not NAME.match(name) or name.startswith("__"):
            check.error(key_position(node, name), "R303", f"invalid aggregate name '{name}'")
            ok = False
            continue
        aggregate = _compile_aggregate(check, node, name, text)
        if aggregate is None:
            ok = False
        else:
            aggregates.append(aggregate)
    return aggregates if ok else MISSING


def _compile_aggregate(check: Checker, node: Any, name: str, text: Any) -> Aggregate | None:
    anchor = value_position(node, name)
    usage = f"'{name}' must be an aggregate call such as count(), avg(event.vibration)"
    if not isinstance(text, str):
        check.error(anchor, "R303", usage)
        return None
    text = str(text)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        tree = None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and not tree.keywords):
        check.error(anchor, "R303", usage)
        return None
    function = tree.func.id
    if function not in AGGREGATORS:
        check.error(
            check.source.locate(anchor, text, text.find(function)),
            "R303",
            f"unknown aggregate '{function}' (aggregates: {', '.join(AGGREGATORS)})",
        )
        return None
    if len(tree.args) > 1 or (not tree.args and function not in OPTIONAL_ARGUMENT):
        check.error(
            anchor,
            "R303",
            f"{function}() takes one argument"
            if function not in OPTIONAL_ARGUMENT
            else f"{function}() takes at most one argument",
        )
        return None
    if not tree.args:
        return Aggregate(name, function, None)
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    inner = text[open_paren + 1 : close_paren]
    argument = check.compile_text(inner, anchor, shift=open_paren + 1, context=text)
    if argument is MISSING:
        return None
    return Aggregate(name, function, argument)

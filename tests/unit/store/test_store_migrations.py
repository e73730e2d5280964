"""Migration bookkeeping against an in-memory stand-in for a CQL session."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from engine.store.migrations import (
    MIGRATIONS,
    Migration,
    MigrationError,
    apply_migrations,
    check_identifier,
    pending_migrations,
)


class RecordingSession:
    """Keeps ``schema_migrations`` rows in memory and logs every other statement."""

    def __init__(self, dict_rows: bool = False) -> None:
        self.statements: list[str] = []
        self.versions: dict[str, dict[int, SimpleNamespace]] = {}
        self.dict_rows = dict_rows

    def execute(self, query: str, parameters: Sequence[Any] | None = None) -> list[Any]:
        text = " ".join(query.split())
        select = re.match(r"SELECT version, name, checksum FROM (\w+)\.schema_migrations", text)
        if select:
            rows = list(self.versions.get(select.group(1), {}).values())
            return [vars(row) for row in rows] if self.dict_rows else rows
        insert = re.match(r"INSERT INTO (\w+)\.schema_migrations", text)
        if insert:
            version, name, checksum, _applied_at = parameters or ()
            self.versions.setdefault(insert.group(1), {})[version] = SimpleNamespace(
                version=version, name=name, checksum=checksum
            )
            return []
        self.statements.append(text)
        return []


def table_migration(version: int, table: str) -> Migration:
    return Migration(
        version,
        f"create {table}",
        (f"CREATE TABLE IF NOT EXISTS {{keyspace}}.{table} (k int PRIMARY KEY)",),
    )


def test_first_run_applies_every_migration_in_order_and_records_it() -> None:
    session = RecordingSession()
    migrations = [table_migration(1, "a"), table_migration(2, "b")]

    applied = apply_migrations(session, "ks_one", 3, migrations)

    assert applied == [1, 2]
    assert session.statements[0].startswith("CREATE KEYSPACE IF NOT EXISTS ks_one")
    assert "'replication_factor': 3" in session.statements[0]
    creates = [s for s in session.statements if s.startswith("CREATE TABLE IF NOT EXISTS ks_one.")]
    assert [s.split()[5] for s in creates] == [
        "ks_one.schema_migrations",
        "ks_one.a",
        "ks_one.b",
    ]
    recorded = session.versions["ks_one"]
    assert {v: r.checksum for v, r in recorded.items()} == {
        1: migrations[0].checksum,
        2: migrations[1].checksum,
    }


@pytest.mark.parametrize("dict_rows", [False, True], ids=["tuple-rows", "dict-rows"])
def test_second_run_applies_nothing(dict_rows: bool) -> None:
    session = RecordingSession(dict_rows)
    apply_migrations(session, "ks", 1)
    executed_before = len(session.statements)

    assert apply_migrations(session, "ks", 1) == []
    # Only the keyspace / version-table guards run again.
    assert len(session.statements) == executed_before + 2


def test_a_new_migration_is_applied_alone() -> None:
    session = RecordingSession()
    apply_migrations(session, "ks", 1, [table_migration(1, "a")])
    session.statements.clear()

    applied = apply_migrations(session, "ks", 1, [table_migration(1, "a"), table_migration(2, "b")])

    assert applied == [2]
    assert not any("ks.a " in s for s in session.statements)
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS ks.b ") for s in session.statements)


def test_an_edited_applied_migration_is_refused() -> None:
    session = RecordingSession()
    apply_migrations(session, "ks", 1, [table_migration(1, "a")])
    edited = Migration(
        1, "create a", ("CREATE TABLE IF NOT EXISTS {keyspace}.a (k text PRIMARY KEY)",)
    )

    with pytest.raises(MigrationError, match=r"migration 1 .* must not be edited"):
        apply_migrations(session, "ks", 1, [edited, table_migration(2, "b")])
    assert 2 not in session.versions["ks"]


def test_reindenting_a_statement_keeps_its_checksum_but_editing_it_does_not() -> None:
    compact = table_migration(1, "a")
    reindented = Migration(
        1, "create a", ("\n  CREATE TABLE IF NOT EXISTS\n      {keyspace}.a (k int PRIMARY KEY)\n",)
    )
    edited = Migration(
        1, "create a", ("CREATE TABLE IF NOT EXISTS {keyspace}.a (k bigint PRIMARY KEY)",)
    )
    assert reindented.checksum == compact.checksum
    assert edited.checksum != compact.checksum


def test_checksum_does_not_depend_on_the_keyspace() -> None:
    first, second = RecordingSession(), RecordingSession()
    apply_migrations(first, "ks_a", 1)
    apply_migrations(second, "ks_b", 1)
    assert {v: r.checksum for v, r in first.versions["ks_a"].items()} == {
        v: r.checksum for v, r in second.versions["ks_b"].items()
    }


@pytest.mark.parametrize("versions", [[1, 1], [2, 1], [0, 1]])
def test_versions_must_be_positive_and_increasing(versions: list[int]) -> None:
    migrations = [table_migration(v, f"t{i}") for i, v in enumerate(versions)]
    with pytest.raises(MigrationError, match="increasing"):
        pending_migrations({}, migrations)


def test_versions_unknown_to_the_code_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    session = RecordingSession()
    apply_migrations(session, "ks", 1, [table_migration(1, "a"), table_migration(2, "b")])
    with caplog.at_level(logging.WARNING, logger="engine.store.migrations"):
        assert apply_migrations(session, "ks", 1, [table_migration(1, "a")]) == []
    assert "unknown to this code: [2]" in caplog.text


@pytest.mark.parametrize("name", ["", "1abc", "ks-1", "ks; DROP KEYSPACE x", "a" * 49])
def test_keyspace_names_that_could_inject_cql_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        check_identifier(name)
    with pytest.raises(ValueError):
        apply_migrations(RecordingSession(), name, 1)


def test_replication_factor_must_be_positive() -> None:
    with pytest.raises(ValueError, match="replication_factor"):
        apply_migrations(RecordingSession(), "ks", 0)


def test_shipped_migrations_create_the_documented_tables_idempotently() -> None:
    session = RecordingSession()
    apply_migrations(session, "ks", 1)
    tables = {
        s.split()[5] for s in session.statements if s.startswith("CREATE TABLE IF NOT EXISTS")
    }
    assert {"ks.action_log", "ks.actions_by_id", "ks.customer_360", "ks.device_registry"} <= tables
    for migration in MIGRATIONS:
        for statement in migration.statements:
            assert "IF NOT EXISTS" in statement or "IF EXISTS" in statement
            assert "{keyspace}." in statement

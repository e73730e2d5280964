"""Versioned, idempotent schema migrations for the Cassandra system of record.

A migration is a numbered list of CQL statements. :func:`apply_migrations`
creates the keyspace, records every applied migration in
``schema_migrations`` (version, name, checksum, applied_at) and applies the
missing ones once, in version order. Running it again changes nothing. Editing
a migration that a database has already applied is refused: its checksum no
longer matches, and silently diverging schemas are worse than a failed start.
To change the schema, append a new migration.

Statements name their tables as ``{keyspace}.<table>`` and must be
idempotent (``IF NOT EXISTS`` / ``IF EXISTS``): Cassandra has no transactional
DDL, so a migration interrupted half way is simply applied again from its
first statement.

>>> [m.version for m in MIGRATIONS][:1]
[1]
>>> len(MIGRATIONS[0].checksum)
64
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


class MigrationError(Exception):
    """The database's recorded migrations do not match this code's."""


class CqlSession(Protocol):
    """The part of ``cassandra.cluster.Session`` that migrations use."""

    def execute(self, query: str, parameters: Sequence[Any] | None = None) -> Iterable[Any]: ...


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``statements`` run in order against the keyspace."""

    version: int
    name: str
    statements: tuple[str, ...]

    @property
    def checksum(self) -> str:
        """SHA-256 of the statements with whitespace normalised, so
        re-indenting a statement is not a change but editing one is."""
        canonical = "\n".join(" ".join(s.split()) for s in self.statements)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "action log, actions by id, customer 360, device registry",
        (
            # A CRM screen reads one customer's history newest first: one
            # partition per customer, clustered by event time descending.
            # action_id in the key makes a re-written action an upsert.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.action_log (
                customer_id text,
                at timestamp,
                action_id text,
                type text,
                device_id text,
                rule_id text,
                rule_version int,
                emitted_at timestamp,
                payload text,
                evidence text,
                schema_version int,
                topic text,
                written_at timestamp,
                PRIMARY KEY ((customer_id), at, action_id)
            ) WITH CLUSTERING ORDER BY (at DESC, action_id ASC)
            """,
            # Lookup by id without a secondary index: a full denormalised copy.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.actions_by_id (
                action_id text PRIMARY KEY,
                customer_id text,
                at timestamp,
                type text,
                device_id text,
                rule_id text,
                rule_version int,
                emitted_at timestamp,
                payload text,
                evidence text,
                schema_version int,
                topic text,
                written_at timestamp
            )
            """,
            # counters is a plain map (snapshot values the actor computed):
            # Cassandra counter columns cannot share a table with others.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.customer_360 (
                customer_id text PRIMARY KEY,
                tier text,
                segment text,
                consent map<text, boolean>,
                devices set<text>,
                last_event_at timestamp,
                counters map<text, bigint>,
                last_action_at timestamp,
                summary text,
                updated_at timestamp
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.device_registry (
                device_id text PRIMARY KEY,
                customer_id text,
                device_type text,
                model text,
                registered_at timestamp,
                deleted boolean,
                updated_at timestamp
            )
            """,
        ),
    ),
    Migration(
        2,
        "erasure audit",
        (
            # One row per GDPR erasure request: when and how much, never who.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.erasures (
                request_id text PRIMARY KEY,
                requested_at timestamp,
                erased_at timestamp,
                completed_at timestamp,
                had_state boolean,
                devices int,
                pending_predictions int,
                events_dropped int,
                rows_deleted map<text, int>
            )
            """,
        ),
    ),
)


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain CQL identifier, else raise ValueError.

    Keyspace names end up inside CQL text (they cannot be bind parameters), so
    only letters, digits and underscores are accepted.

    >>> check_identifier("iotcrm_test_1a2b")
    'iotcrm_test_1a2b'
    >>> check_identifier("x; DROP KEYSPACE y")
    Traceback (most recent call last):
    ...
    ValueError: not a valid CQL identifier: 'x; DROP KEYSPACE y'
    """
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a valid CQL identifier: {name!r}")
    return name


def check_sequence(migrations: Sequence[Migration]) -> None:
    """Raise MigrationError unless versions are unique and strictly increasing."""
    versions = [m.version for m in migrations]
    if any(b <= a for a, b in pairwise(versions)) or any(v < 1 for v in versions):
        raise MigrationError(f"migration versions must be positive and increasing: {versions}")


def applied_migrations(session: CqlSession, keyspace: str) -> dict[int, AppliedMigration]:
    """The migrations recorded in ``keyspace.schema_migrations``, by version."""
    rows = session.execute(
        f"SELECT version, name, checksum FROM {check_identifier(keyspace)}.schema_migrations"
    )
    recorded = (AppliedMigration(*(_column(row, c) for c in _RECORD_COLUMNS)) for row in rows)
    return {migration.version: migration for migration in recorded}


_RECORD_COLUMNS = ("version", "name", "checksum")


def _column(row: Any, name: str) -> Any:
    """A column of a dict row or a named-tuple row (the session's row factory decides)."""
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def pending_migrations(
    applied: dict[int, AppliedMigration], migrations: Sequence[Migration] = MIGRATIONS
) -> list[Migration]:
    """The migrations still to apply; MigrationError if an applied one changed.

    >>> m = Migration(1, "t", ("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY)",))
    >>> [p.version for p in pending_migrations({}, [m])]
    [1]
    >>> pending_migrations({1: AppliedMigration(1, "t", m.checksum)}, [m])
    []
    """
    check_sequence(migrations)
    pending = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is None:
            pending.append(migration)
        elif recorded.checksum != migration.checksum:
            raise MigrationError(
                f"migration {migration.version} ({migration.name!r}) was applied with checksum "
                f"{recorded.checksum[:12]}… but the code now has {migration.checksum[:12]}…: "
                "applied migrations must not be edited; add a new migration instead"
            )
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        # A newer release migrated this database; older code keeps running
        # during a rolling deploy, so this is worth a warning, not a refusal.
        log.warning("database has migrations unknown to this code: %s", unknown)
    return pending


def apply_migrations(
    session: CqlSession,
    keyspace: str,
    replication_factor: int,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[int]:
    """Create ``keyspace`` if needed and apply pending migrations in order.

    Returns the versions applied by this call (empty when up to date). The
    session must be synchronous (``cassandra.cluster.Session`` is); run this
    once at start-up, before the first write.
    """
    keyspace = check_identifier(keyspace)
    if replication_factor < 1:
        raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {int(replication_factor)}}}"
    )
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations ("
        "version int PRIMARY KEY, name text, checksum text, applied_at timestamp)"
    )
    pending = pending_migrations(applied_migrations(session, keyspace), migrations)
    applied_now: list[int] = []
    for migration in pending:
        log.info("applying migration %d: %s", migration.version, migration.name)
        for statement in migration.statements:
            session.execute(render(statement, keyspace))
        session.execute(
            f"INSERT INTO {keyspace}.schema_migrations (version, name, checksum, applied_at) "
            "VALUES (%s, %s, %s, %s)",
            (migration.version, migration.name, migration.checksum, int(time.time() * 1000)),
        )
        applied_now.append(migration.version)
    return applied_now


def render(statement: str, keyspace: str) -> str:
    """The statement with ``{keyspace}`` replaced by the (checked) keyspace name.

    Checksums cover the template, so the same migration has the same checksum
    in every keyspace.

    >>> render("CREATE TABLE IF NOT EXISTS {keyspace}.t (k int PRIMARY KEY)", "ks")
    'CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY)'
    """
    return statement.replace("{keyspace}", check_identifier(keyspace))

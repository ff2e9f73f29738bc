"""Server-side prepared statements for the statements a connection runs again and again.

psycopg2 sends each statement as text, so PostgreSQL parses and plans it on every call; for the hot
statements (the submit, a job's claim and success, the top-up, a monitor look) planning cost the server
more CPU than running them (bench/README.md, "PostgreSQL CPU by statement"). psycopg 3 prepares a
statement it has seen a few times on a connection; psycopg2 has no such option, so this listener does the
same: the ``PREPARE_AFTER``-th time one connection runs a statement text, the text is ``PREPARE``d on that
connection, and from then on it goes out as ``EXECUTE name(...)`` with the same parameters, which
psycopg2 renders as literals exactly as it would have in the text.

Left as text: ``executemany``, statements with a list parameter (an ``ARRAY[...]`` literal of text cannot
be coerced to a ``uuid[]`` parameter), anything but SELECT, INSERT, UPDATE, DELETE and WITH, and a text
PostgreSQL refuses to prepare (tried once per process, inside a savepoint, so the caller's transaction
is untouched). Prepared statements live as long as their connection and survive a rollback. They do not
survive a pooler that hands one client's statements to several server connections (PgBouncer in
transaction mode): ``GPUJOBS_DB_PREPARED_STATEMENTS=0`` turns this off.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from sqlalchemy import Engine, event

# The executions of one text on one connection before it is prepared: a statement run once is not.
PREPARE_AFTER = 2
# At most this many prepared statements per connection (each holds a plan in the server's memory), and
# texts counted towards preparation (texts with literals inlined are each new).
MAX_PREPARED = 256
MAX_COUNTED = 4096
_PREPARABLE = re.compile(r"\s*(?:SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.I)
# psycopg2's placeholders (``%(name)s``) and its escaped percent sign (``%%``).
_PLACEHOLDER = re.compile(r"%%|%\(([^)]+)\)s")
_INFO_KEY = "gpujobs.prepared"


@dataclass(frozen=True)
class _Rewrite:
    """A text's prepared form: the PREPARE to send once per connection, the EXECUTE to send each time."""

    prepare: str
    execute: str


@dataclass
class _ConnectionStatements:
    """What one DBAPI connection has prepared, and how often it ran each text not prepared yet."""

    prepared: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)


# Per process: each text's rewrite (None: never prepared, it is not a query or the server refused it).
_rewrites: dict[str, _Rewrite | None] = {}
_UNSEEN = _Rewrite("", "")


def prepare_repeated_statements(engine: Engine) -> None:
    """Send the statements each connection repeats as ``EXECUTE`` of a statement prepared on it."""
    event.listen(engine, "before_cursor_execute", _before_execute, retval=True)


def _before_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    if executemany or not isinstance(parameters, dict):
        return statement, parameters
    if any(isinstance(value, (list, tuple)) for value in parameters.values()):
        return statement, parameters
    rewrite = _rewrite(statement)
    if rewrite is None:
        return statement, parameters
    state: _ConnectionStatements = conn.connection.info.setdefault(_INFO_KEY, _ConnectionStatements())
    if statement not in state.prepared:
        runs = state.counts.get(statement, 0) + 1
        if runs < PREPARE_AFTER or len(state.prepared) >= MAX_PREPARED:
            if len(state.counts) >= MAX_COUNTED:
                state.counts.clear()
            state.counts[statement] = runs
            return statement, parameters
        state.counts.pop(statement, None)
        if not _prepare(cursor, statement, rewrite):
            return statement, parameters
        state.prepared.add(statement)
    return rewrite.execute, parameters


def _rewrite(statement: str) -> _Rewrite | None:
    """The text's PREPARE and EXECUTE (cached per process), or None when it is not to be prepared."""
    cached = _rewrites.get(statement, _UNSEEN)  # one lookup: another thread may clear the cache meanwhile
    if cached is not _UNSEEN:
        return cached
    if len(_rewrites) >= MAX_COUNTED:
        _rewrites.clear()  # texts with literals inlined are each new: a cache, not a record
    rewrite = None
    if _PREPARABLE.match(statement):
        name = "gpujobs_" + hashlib.blake2b(statement.encode(), digest_size=8).hexdigest()
        positions: dict[str, int] = {}

        def to_position(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return "%"  # the PREPARE goes out without parameters: psycopg2 unescapes nothing
            return f"${positions.setdefault(match.group(1), len(positions) + 1)}"

        body = _PLACEHOLDER.sub(to_position, statement)
        arguments = ", ".join(f"%({parameter})s" for parameter in positions)
        execute = f"EXECUTE {name}({arguments})" if positions else f"EXECUTE {name}"
        rewrite = _Rewrite(f"PREPARE {name} AS {body}", execute)
    _rewrites[statement] = rewrite
    return rewrite


def _prepare(cursor: Any, statement: str, rewrite: _Rewrite) -> bool:
    """PREPARE the text on the cursor's connection; False when that failed (and, when the server refused
    the text itself, never again in this process).

    Inside a savepoint, rolled back to on any error, so a failed PREPARE leaves the caller's transaction
    as it was (an error such as a lock timeout is the statement's to meet, not this one's). A lost
    connection: the statement then goes out as text and fails as it would have, for the caller to handle.
    """
    savepoint = not cursor.connection.autocommit
    preparing = False
    try:
        if savepoint:
            cursor.execute("SAVEPOINT gpujobs_prepare")
        preparing = True  # from here on an error is the PREPARE's
        cursor.execute(rewrite.prepare)
    except psycopg2.Error as exc:
        if preparing and savepoint and not cursor.connection.closed:
            with contextlib.suppress(psycopg2.Error):
                cursor.execute("ROLLBACK TO SAVEPOINT gpujobs_prepare")
                cursor.execute("RELEASE SAVEPOINT gpujobs_prepare")
        if preparing and not isinstance(exc, psycopg2.OperationalError):
            _rewrites[statement] = None  # the server refuses this text
        return False
    if savepoint:
        cursor.execute("RELEASE SAVEPOINT gpujobs_prepare")
    return True

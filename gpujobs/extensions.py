"""Bare extension objects, bound to an app in the factory (the Flask pattern that avoids cycles), how the
engine connects to PostgreSQL (its URL and options from the settings), the two answers of the database
that SQLAlchemy's types leave out (rows changed, the constraint broken), and the check that keeps a
connection the server closed out of use."""

from __future__ import annotations

import select
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg2
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ColumnElement, Engine, Table, event, func, literal_column
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute

from gpujobs.states import sql_list


class Base(DeclarativeBase):
    """Declarative base for every model."""

    __table__: ClassVar[Table]  # every model maps one table (SQLAlchemy types it as any FromClause)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()

# mypy cannot use an attribute such as ``db.Model`` as a base class (python/mypy#8603); it checks the
# models against the declarative base that ``db.Model`` is built from.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model


# TCP keepalives on every PostgreSQL connection (libpq; ignored on a Unix socket): a server that vanished
# without closing the connection (a failover, a dropped network path) is noticed after about a minute
# (30 s idle, then 3 probes 10 s apart) by a statement waiting on it, which then fails and is retried,
# instead of waiting forever. A thread of the webhook worker has no hard time limit to end that wait.
TCP_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """SQLAlchemy engine options from the pool settings.

    No ``pool_pre_ping``: its ``SELECT 1`` was a round trip per checkout (15 per GPU job); a connection the
    server closed is dropped at checkout by ``drop_closed_connections`` instead.
    """
    return {
        "pool_size": config["GPUJOBS_DB_POOL_SIZE"],
        "max_overflow": config["GPUJOBS_DB_MAX_OVERFLOW"],
        "pool_timeout": config["GPUJOBS_DB_POOL_TIMEOUT_SECONDS"],
        "pool_recycle": config["GPUJOBS_DB_POOL_RECYCLE_SECONDS"],
        "connect_args": {"connect_timeout": config["GPUJOBS_DB_CONNECT_TIMEOUT_SECONDS"], **TCP_KEEPALIVES},
    }


def sqlalchemy_url(database_url: str) -> str:
    """Use psycopg2 explicitly and accept Heroku-style ``postgres://`` URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg2://" + database_url[len(prefix) :]
    return database_url


def rows_changed(result: Result[*tuple[Any, ...]]) -> int:
    """How many rows an UPDATE, DELETE or INSERT changed (the compare-and-set answer).

    ``Session.execute`` is typed as returning a plain ``Result``; a data-changing statement always
    gets the driver's ``CursorResult``, which is the one that carries ``rowcount``.
    """
    assert isinstance(result, CursorResult)
    return result.rowcount


def interval_seconds(count: float | ColumnElement[Any]) -> ColumnElement[Any]:
    """An interval of ``count`` seconds, exactly (a ``timedelta`` reaches the server as days, which a
    non-UTC session stretches across a daylight-saving change), as SQL PostgreSQL can prepare: with a
    ``timedelta`` parameter, ``now() - $1`` is ambiguous (an interval, or another timestamp?) and the
    statement stays text."""
    return func.make_interval(0, 0, 0, 0, 0, 0, count)


def seconds_ago(count: float | ColumnElement[Any]) -> ColumnElement[Any]:
    """``now()`` less ``count`` seconds (``interval_seconds``)."""
    return func.now() - interval_seconds(count)


def among(column: ColumnElement[Any] | QueryableAttribute[Any], words: Iterable[str]) -> ColumnElement[bool]:
    """``column IN ('a', 'b')`` for fixed words (statuses), written into the SQL. ``column.in_(words)``
    binds them as an "expanding" parameter, which SQLAlchemy rewrites into the SQL text on every
    execution: ~30 µs of CPU per statement, for the very SQL the server gets from this one. For Core
    statements and reads: an ORM ``update(Model)`` cannot evaluate it in Python to keep the rows loaded
    in the session in step, so it would add a ``RETURNING`` and fetch them; those keep ``in_``."""
    return column.op("IN", is_comparison=True)(literal_column(f"({sql_list(words)})"))


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint PostgreSQL says a write broke, to tell a duplicate from other faults."""
    return exc.orig.diag.constraint_name if isinstance(exc.orig, psycopg2.Error) else None


def drop_closed_connections(engine: Engine) -> None:
    """Replace, at checkout, a pooled connection the server has closed (a restart, a terminated backend).

    An idle PostgreSQL connection is sent nothing unless the server ends it (a FATAL goodbye, then EOF),
    so an idle socket with something to read is a connection to drop. Asking the kernel costs no round
    trip, where ``pool_pre_ping`` sent a ``SELECT 1`` on every checkout. DisconnectionError makes the pool
    discard the connection and open a fresh one in its place before the caller sees it.
    """
    event.listen(engine, "checkout", _refuse_closed)


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    if dbapi_connection.closed or _has_input(dbapi_connection.fileno()):
        raise DisconnectionError("the server closed this pooled connection")


def _has_input(fd: int) -> bool:
    """Whether the socket is readable (data, EOF or an error) without waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))

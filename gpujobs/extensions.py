"""Bare extension objects, bound to an app in the factory (the Flask pattern that avoids cycles), and the
two answers of the database that SQLAlchemy's types leave out: rows changed and the constraint broken."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import psycopg2
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Table
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase


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


def rows_changed(result: Result[*tuple[Any, ...]]) -> int:
    """How many rows an UPDATE, DELETE or INSERT changed (the compare-and-set answer).

    ``Session.execute`` is typed as returning a plain ``Result``; a data-changing statement always
    gets the driver's ``CursorResult``, which is the one that carries ``rowcount``.
    """
    assert isinstance(result, CursorResult)
    return result.rowcount


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint PostgreSQL says a write broke, to tell a duplicate from other faults."""
    return exc.orig.diag.constraint_name if isinstance(exc.orig, psycopg2.Error) else None

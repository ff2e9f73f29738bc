"""Keyset (cursor) pagination: the cost of a page never grows with how deep it is."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, tuple_

from gpujobs.exceptions import InvalidField

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_CURSOR_LENGTH = 200


class PageQuery(BaseModel):
    """Query parameters of every paginated list (extend it with the list's filters)."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="items per page")
    cursor: str | None = Field(
        None, max_length=MAX_CURSOR_LENGTH, description="nextCursor of the previous page"
    )


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """An opaque cursor pointing just after this row."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def after_cursor(query: Select[Any], model: Any, cursor: str | None) -> Select[Any]:
    """Order newest first and continue after ``cursor`` (created_at, id) when one is given."""
    query = query.order_by(model.created_at.desc(), model.id.desc())
    if not cursor:
        return query
    try:
        created_raw, id_raw = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        created_at, row_id = datetime.fromisoformat(created_raw), uuid.UUID(id_raw)
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        raise InvalidField(
            "cursor", "not a cursor of this API; use nextCursor from a previous page"
        ) from None
    # A row comparison, not "a < x OR (a = x AND b < y)": PostgreSQL turns it into an index condition
    # and starts reading at the cursor, where the OR form reads every newer row and filters them out.
    return query.where(tuple_(model.created_at, model.id) < tuple_(created_at, row_id))


def page(rows: list[Any], limit: int, shape: Any) -> dict[str, Any]:
    """The response body of one page: items plus ``nextCursor`` (null on the last page)."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return {"items": [shape(row) for row in rows], "nextCursor": cursor}

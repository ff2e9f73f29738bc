"""``Idempotency-Key`` for the POST views that create things (draft-ietf-httpapi-idempotency-key-header).

A key is scoped to the caller's tenant and bound to one request: a SHA-256 digest of the method, the
path and the canonical JSON body (the ``idempotencyKey`` field left out, so the header and the field
are interchangeable). The first request claims the key in its own committed transaction
(``INSERT ... ON CONFLICT``), so of many concurrent requests exactly one runs the view; the others
are told 409 while it runs and get its stored answer afterwards. Only 2xx answers are stored: a
request that failed (4xx, 5xx, exception) created nothing, so its key is released for a retry.
Keys expire after 24 hours (the cleanup sweep deletes them; an expired key may be reused).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec

from flask import Response, g, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gpujobs.api.errors import ApiError
from gpujobs.api.validation import json_object
from gpujobs.exceptions import InvalidField
from gpujobs.extensions import db, seconds_ago, violated_constraint
from gpujobs.models import IdempotencyRecord, Job
from gpujobs.sweeps import IDEMPOTENCY_RETENTION_HOURS

log = logging.getLogger(__name__)

P = ParamSpec("P")

HEADER = "Idempotency-Key"
BODY_FIELD = "idempotencyKey"
REPLAYED_HEADER = "Idempotent-Replayed"
# A first request still unanswered after this long died with its process; a repeat may take over.
IN_FLIGHT_TIMEOUT_SECONDS = 60
# Printable ASCII without quotes or backslashes: what an sf-string can carry (a UUID is recommended).
KEY_PATTERN = r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,200}$"
_KEY_RE = re.compile(KEY_PATTERN)
REPLAYED_HEADERS = ("Location",)


def idempotent(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Make a creating POST view safe to retry with an ``Idempotency-Key`` header or ``idempotencyKey`` field.

    Place it under ``@require_api_key`` (it needs ``g.tenant``). Same key and same request: the first
    2xx answer is replayed with ``Idempotent-Replayed: true``. Same key, different request: 422.
    Same key while the first request is still running: 409 with ``Retry-After``. The view reads the
    key with :func:`current_key` (to store it on what it creates). Without a key the view just runs.
    """

    @wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        key = _request_key()
        if key is None:
            return view(*args, **kwargs)
        tenant_id, digest = g.tenant.id, _request_digest()
        for _ in range(2):  # a second round when the first request's key was released meanwhile
            if _claim(tenant_id, key, digest):
                return _run_claimed(view, args, kwargs, tenant_id, key)
            record = db.session.get(IdempotencyRecord, (tenant_id, key), populate_existing=True)
            if record is not None:
                return _answer_repeat(record, digest)
        raise _in_flight()

    # Read by the OpenAPI generator; mypy does not model attributes set on functions (python/mypy#2087).
    wrapped.idempotent = True  # type: ignore[attr-defined]
    return wrapped


def current_key() -> str | None:
    """The idempotency key of the current request, validated (None without one)."""
    return g.get("idempotency_key")


def _request_key() -> str | None:
    header = request.headers.get(HEADER)
    if header is not None:
        header = header.strip()
        if len(header) >= 2 and header[0] == header[-1] == '"':  # the sf-string form
            header = header[1:-1]
        if not _KEY_RE.match(header):
            raise InvalidField(HEADER, "must be 1-200 printable ASCII characters (a UUID is best)")
    field = json_object().get(BODY_FIELD) if request.is_json else None
    if field is not None and (not isinstance(field, str) or not _KEY_RE.match(field)):
        raise InvalidField(BODY_FIELD, "must be 1-200 printable ASCII characters (a UUID is best)")
    if header is not None and field is not None and header != field:
        raise InvalidField(BODY_FIELD, f"differs from the {HEADER} header")
    g.idempotency_key = header if header is not None else field
    return g.idempotency_key


def _request_digest() -> str:
    if request.is_json:
        body = {name: value for name, value in json_object().items() if name != BODY_FIELD}
        payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        payload = request.get_data(cache=True)
    return hashlib.sha256(f"{request.method} {request.path}\n".encode() + payload).hexdigest()


def _claim(tenant_id: uuid.UUID, key: str, digest: str) -> bool:
    """Take the key: new, expired, or abandoned in flight by a request with this same digest."""
    table = IdempotencyRecord.__table__
    claim = insert(table).values(tenant_id=tenant_id, key=key, request_digest=digest)
    statement = claim.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.key],
        set_={
            "request_digest": claim.excluded.request_digest,
            "response_status": None,
            "response_body": None,
            "created_at": func.now(),
        },
        where=or_(
            table.c.created_at < seconds_ago(IDEMPOTENCY_RETENTION_HOURS * 3600),
            (table.c.response_status.is_(None))
            & (table.c.request_digest == digest)
            & (table.c.created_at < seconds_ago(IN_FLIGHT_TIMEOUT_SECONDS)),
        ),
    ).returning(table.c.key)
    claimed = db.session.execute(statement).first() is not None
    db.session.commit()
    return claimed


def _run_claimed(view: Callable[..., Any], args: Any, kwargs: Any, tenant_id: uuid.UUID, key: str) -> Any:
    try:
        response = make_response(view(*args, **kwargs))
    except BaseException:
        _release(tenant_id, key)
        raise
    if 200 <= response.status_code < 300:
        _store(tenant_id, key, response)
    else:
        _release(tenant_id, key)
    return response


def _answer_repeat(record: IdempotencyRecord, digest: str) -> Response:
    if record.request_digest != digest:
        raise InvalidField(HEADER, "this key was already used with a different request; use a new key")
    if record.response_status is None or record.response_body is None:
        raise _in_flight()
    response = jsonify(record.response_body["body"])
    response.status_code = record.response_status
    response.headers.update(record.response_body.get("headers", {}))
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _in_flight() -> ApiError:
    return ApiError(
        409,
        "Conflict",
        "a request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


def _store(tenant_id: uuid.UUID, key: str, response: Response) -> None:
    """Keep the answer for repeats; if the database refuses, the answer still goes out (logged)."""
    headers = {name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers}
    try:
        db.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key)
            .values(
                response_status=response.status_code,
                response_body={"body": response.get_json(), "headers": headers},
            )
        )
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.warning("idempotency answer not stored (%s); repeats get 409 for a while", type(exc).__name__)


def _release(tenant_id: uuid.UUID, key: str) -> None:
    """Forget a key whose request failed, so that the client can retry with it."""
    try:
        db.session.rollback()
        db.session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == tenant_id,
                IdempotencyRecord.key == key,
                IdempotencyRecord.response_status.is_(None),
            )
        )
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.warning("idempotency key not released (%s); it frees itself after a minute", type(exc).__name__)


JOB_IDEMPOTENCY_INDEX = "uq_jobs_tenant_idempotency"


@contextmanager
def job_key_conflicts() -> Iterator[None]:
    """409 naming the job when this request's key still belongs to a job whose stored answer is gone
    (expired, or lost to a failure): the jobs table refuses a second job with the key."""
    try:
        yield
    except IntegrityError as exc:
        if violated_constraint(exc) != JOB_IDEMPOTENCY_INDEX:
            raise
        db.session.rollback()
        key = current_key()
        job_id = db.session.scalar(
            select(Job.id).where(Job.tenant_id == g.tenant.id, Job.idempotency_key == key)
        )
        raise ApiError(
            409, "Conflict", f"Idempotency-Key {key!r} already belongs to job {job_id}", jobId=str(job_id)
        ) from None

"""Dashboard sign-in: an API key in, a signed session cookie out, and CSRF tokens for every form.

The cookie (Flask's signed session) holds the tenant id, the id of the API key row that signed in,
the id of its ``dashboard_sessions`` row and a random session nonce; never the key itself. Each request
checks that row and the key in one query, uncached: signing out deletes the row and revoking the key
(``keys revoke``) ends every session it opened, both from the next request on. The CSRF
token is an HMAC of that nonce under the app's secret key, so it needs no storage of its own; every
POST under ``/ui`` must carry it (400 otherwise). Signing in rotates the nonce, so a token or cookie
planted before sign-in is worthless after it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta
from typing import Any

from flask import (
    Flask,
    Request,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature
from sqlalchemy import delete, select
from werkzeug.wrappers import Response

from gpujobs.extensions import db
from gpujobs.jobs import utcnow
from gpujobs.models import ApiKey, DashboardSession, Tenant
from gpujobs.tenants import authenticate, key_digest
from gpujobs.ui import bp

COOKIE_NAME = "gpujobs_ui"
# A session is good for this long after sign-in (its server-side row is dated); then the key is asked again.
SESSION_MAX_AGE_SECONDS = 12 * 60 * 60
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
PUBLIC_ENDPOINTS = frozenset({"ui.signin", "ui.static"})


class DashboardSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session with the dashboard's cookie attributes and lifetime."""

    salt = "gpujobs-ui-session"

    def get_cookie_name(self, app: Flask) -> str:
        """Its own name, so nothing else on the host shares it."""
        return COOKIE_NAME

    def get_cookie_path(self, app: Flask) -> str:
        """Sent only to the dashboard, never to the API."""
        return bp.url_prefix or "/"

    def get_cookie_httponly(self, app: Flask) -> bool:
        """Out of reach of scripts."""
        return True

    def get_cookie_samesite(self, app: Flask) -> str:
        """Not sent on cross-site POSTs (CSRF tokens are checked as well)."""
        return "Lax"

    def get_cookie_secure(self, app: Flask) -> bool:
        """HTTPS only, except plain http to this machine (``make run``); browsers drop it elsewhere."""
        return not is_local_http(request)

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """Load the cookie, refusing a bad signature or one older than ``SESSION_MAX_AGE_SECONDS``."""
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw:
            return self.session_class()
        try:
            return self.session_class(serializer.loads(raw, max_age=SESSION_MAX_AGE_SECONDS))
        except BadSignature:
            return self.session_class()


def is_local_http(req: Request) -> bool:
    """True for plain http to localhost, the one place a non-Secure cookie is acceptable."""
    return req.scheme == "http" and req.host.rsplit(":", 1)[0].lower() in LOCAL_HOSTS


def csrf_token() -> str:
    """The token for this session's forms (the session gets a nonce on first use)."""
    if "nonce" not in session:
        session["nonce"] = secrets.token_urlsafe(24)
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, f"csrf|{session['nonce']}".encode(), hashlib.sha256).hexdigest()


def _csrf_valid() -> bool:
    sent = request.form.get("csrf_token", "")
    return "nonce" in session and hmac.compare_digest(sent.encode(), csrf_token().encode())


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    """``csrf_token()`` and the signed-in ``tenant`` in every dashboard template."""
    return {"csrf_token": csrf_token, "tenant": g.get("tenant")}


@bp.before_request
def _guard() -> Response | None:
    """Refuse POSTs without this session's CSRF token; send visitors without a session to sign in."""
    if request.method == "POST" and not _csrf_valid():
        abort(400, "the form's CSRF token is missing or stale: reload the page and try again")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    g.tenant = _session_tenant()
    if g.tenant is None:
        for name in ("tenant_id", "key_id", "session_id"):
            session.pop(name, None)
        next_url = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("ui.signin", next=next_url))
    return None


def _session_tenant() -> Tenant | None:
    """The session's tenant while its server-side row lives and the API key that signed in is valid."""
    try:
        tenant_id, key_id = uuid.UUID(session["tenant_id"]), uuid.UUID(session["key_id"])
        session_id = uuid.UUID(session["session_id"])
    except (KeyError, ValueError, TypeError):
        return None
    return db.session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .join(DashboardSession, DashboardSession.api_key_id == ApiKey.id)
        .where(
            DashboardSession.id == session_id,
            DashboardSession.created_at > utcnow() - timedelta(seconds=SESSION_MAX_AGE_SECONDS),
            ApiKey.id == key_id,
            ApiKey.tenant_id == tenant_id,
            ApiKey.revoked_at.is_(None),
        )
    )


def _start_session(key_id: uuid.UUID) -> uuid.UUID:
    """Record a new session (and forget sessions past their age, which no cookie can use any more)."""
    stale = utcnow() - timedelta(seconds=SESSION_MAX_AGE_SECONDS)
    db.session.execute(delete(DashboardSession).where(DashboardSession.created_at < stale))
    record = DashboardSession(id=uuid.uuid4(), api_key_id=key_id)
    db.session.add(record)
    db.session.commit()
    return record.id


def dashboard_path(target: str | None, default: str) -> str:
    """``target`` if it is a path inside the dashboard, else ``default``: never an open redirect."""
    prefix = f"{bp.url_prefix}/"
    if target and target.startswith(prefix) and not target.startswith("//") and "\\" not in target:
        return target
    return default


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> Response | tuple[str, int] | str:
    """The sign-in form; a valid API key starts a session for its tenant."""
    next_url = dashboard_path(request.values.get("next"), url_for("ui.overview"))
    if request.method == "GET":
        return render_template("ui/signin.html", next_url=next_url)
    api_key = request.form.get("api_key", "").strip()
    tenant = authenticate(api_key) if api_key else None
    if tenant is None:
        return render_template("ui/signin.html", next_url=next_url, failed=True), 401
    key_id = db.session.execute(
        select(ApiKey.id).where(ApiKey.key_digest == key_digest(api_key))
    ).scalar_one()
    session.clear()  # a fresh nonce: tokens issued before sign-in stop working
    tenant_id = tenant.id
    session_id = _start_session(key_id)
    session.update(
        tenant_id=str(tenant_id),
        key_id=str(key_id),
        session_id=str(session_id),
        nonce=secrets.token_urlsafe(24),
    )
    return redirect(next_url)


@bp.post("/signout")
def signout() -> Response:
    """End the session on the server (a copy of the cookie is worthless now) and in the browser."""
    db.session.execute(
        delete(DashboardSession).where(DashboardSession.id == uuid.UUID(session["session_id"]))
    )
    db.session.commit()
    session.clear()
    flash("Signed out.")
    return redirect(url_for("ui.signin"))

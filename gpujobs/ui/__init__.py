"""``/ui``: the operator dashboard, server-rendered from the same database as the API.

Pages (``pages``), operator actions (``actions``) and sign-in (``signin``) are plain Flask views over
Jinja templates: no front-end build, one CSS file, a few lines of JavaScript for self-refresh. A
signed-in browser holds a session cookie naming its tenant and API key row (never the key), and
every page shows that tenant's rows only, through the same tenant-scoped lookups as the API.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, render_template
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException

from gpujobs.api.errors import ANSWERED, UNROUTED_PAGES, problem_of
from gpujobs.exceptions import GpuJobsError
from gpujobs.states import JobStatus

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

# No inline script or style, nothing from elsewhere, forms post only back here, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@bp.context_processor
def _states() -> dict[str, Any]:
    """``JobStatus`` in every dashboard template, so a template compares with a member, not a word."""
    return {"JobStatus": JobStatus}


@bp.record_once
def _install_session(state: BlueprintSetupState) -> None:
    """Give the app the dashboard's session cookie (HttpOnly, SameSite=Lax, Secure off localhost), and
    its error page for addresses under /ui that no page serves."""
    from gpujobs.ui.signin import DashboardSessionInterface

    assert isinstance(state.app, Flask)  # typed as the sans-IO App, which has no sessions
    state.app.session_interface = DashboardSessionInterface()
    # A mistyped /ui/... address is a page too, like the dashboard's other errors, not problem JSON.
    state.app.extensions[UNROUTED_PAGES] = (bp.url_prefix, _http_error)


@bp.after_request
def _security_headers(response: Response) -> Response:
    """Pages are private and live: never cached, never framed, no third-party content."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(exc: GpuJobsError) -> tuple[str, int]:
    """The API's answers to the same errors (404 for another tenant's id, 422 for a bad cursor) as pages."""
    answer = problem_of(exc)
    errors = answer.extra.get("errors") or []
    page = render_template(
        "ui/error.html", status=answer.status, title=answer.title, detail=answer.detail, errors=errors
    )
    return page, answer.status


for _error_class in ANSWERED:
    bp.register_error_handler(_error_class, _error_page)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    """HTTP errors inside ``/ui`` (a refused CSRF token, an unknown id) as pages, not problem JSON."""
    status = exc.code or 500
    return render_template("ui/error.html", status=status, title=exc.name, detail=exc.description), status


from gpujobs.ui import actions, pages, signin  # noqa: E402, F401  (their routes register on bp)

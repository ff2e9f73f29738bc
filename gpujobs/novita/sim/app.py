"""The simulator's Flask app: the Novita API under `/gpu-instance/openapi/v1` plus admin routes under `/_sim`.

API calls pass, in order: injected latency, bearer auth, injected errors, the handler, then (for a
successful POST) an injected lost response, and finally the ledger. Admin routes need no key and are not
recorded, so tests count only the calls the client made.

Admin routes:
- `POST /_sim/inject` (JSON options, see faults.py, plus `capacity` and `reclaim_instances`);
  `GET /_sim/inject` shows the current fault settings.
- `GET /_sim/ledger` -> `{"calls": [...]}`; `GET /_sim/instances` -> `{"instances": [...]}`.
- `POST /_sim/reset` -> back to the seed with no faults and an empty ledger.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

import hmac
import socket
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request

from gpujobs.novita import spec
from gpujobs.novita.sim.state import SimState
from gpujobs.novita.sim.validation import SimApiError, invalid

ADMIN_PREFIX = "/_sim"

# What a Cloudflare or gateway error looks like to a client: HTML, not the API's JSON envelope.
HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} | api.novita.ai | Cloudflare</title></head>"
    "<body><h1>Error {status}</h1><p>The web server reported an error.</p></body></html>"
)


def error_response(
    http_status: int,
    reason: str,
    message: str,
    *,
    html: bool = False,
    retry_after_seconds: float | None = None,
) -> Response:
    """An error answer in Novita's envelope (§12), or an HTML page as a proxy would send."""
    if html:
        response = Response(HTML_ERROR_PAGE.format(status=http_status), mimetype="text/html")
    else:
        response = jsonify({"code": http_status, "reason": reason, "message": message, "metadata": {}})
    response.status_code = http_status
    if retry_after_seconds is not None:
        response.headers["Retry-After"] = f"{retry_after_seconds:g}"
    return response


def _endpoint() -> str:
    return request.path[len(spec.BASE_PATH) :]


def _json_body() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _required(source: Any, key: str) -> str:
    value = source.get(key)
    if not value or not isinstance(value, str):
        raise invalid(f"{key} is required")
    return value


def _api_blueprint(state: SimState) -> Blueprint:
    api = Blueprint("novita_api", __name__, url_prefix=spec.BASE_PATH)
    expected_auth = f"Bearer {state.config.api_key}".encode()

    @api.before_request
    def _gate() -> Response | None:
        g.started, g.injected, g.lost = time.monotonic(), False, False
        if state.faults.latency_seconds:
            time.sleep(state.faults.latency_seconds)
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected_auth):
            if state.faults.auth_failure_status == 403:
                return error_response(403, "INVALID_API_KEY", "invalid api-key")
            return error_response(401, "UNAUTHORIZED", "API key is missing or incorrect")
        failure = state.faults.take_failure(_endpoint())
        if failure is None:
            return None
        g.injected = True
        return error_response(
            failure.status,
            failure.reason,
            failure.message or f"injected {failure.reason}",
            html=failure.html,
            retry_after_seconds=failure.retry_after_seconds,
        )

    @api.after_request
    def _finish(response: Response) -> Response:
        if (
            request.method == "POST"
            and response.status_code < 300
            and state.faults.take_lost_response(_endpoint())
        ):
            # The work is done; now vanish without answering, as a dropped connection or proxy timeout would.
            request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            g.lost = True
        state.record_call(
            {
                "method": request.method,
                "path": request.path,
                "endpoint": _endpoint(),
                "status": None if g.lost else response.status_code,
                "lost": g.lost,
                "injected": g.injected,
                "at": state.clock(),
                "elapsed_ms": round((time.monotonic() - g.started) * 1000, 1),
                "user_agent": request.headers.get("User-Agent", ""),
                "content_type": request.headers.get("Content-Type", ""),
            }
        )
        return response

    @api.get(spec.CLUSTERS_PATH)
    def clusters() -> Response:
        return jsonify({"data": state.clusters()})

    @api.get(spec.PRODUCTS_PATH)
    def products() -> Response:
        return jsonify({"data": state.products(request.args)})

    @api.get(spec.TEMPLATE_PATH)
    def template() -> Response:
        return jsonify(state.catalog.template_json(_required(request.args, spec.TEMPLATE_ID_PARAM)))

    @api.get(spec.REGISTRY_AUTHS_PATH)
    def registry_auths() -> Response:
        return jsonify({"data": state.catalog.auths_json()})

    @api.post(spec.INSTANCE_CREATE_PATH)
    def create_instance() -> Response:
        return jsonify({"id": state.create(_json_body())})

    @api.get(spec.INSTANCE_PATH)
    def get_instance() -> Response:
        return jsonify(state.get_instance(_required(request.args, spec.INSTANCE_ID_PARAM)))

    @api.get(spec.INSTANCES_PATH)
    def list_instances() -> Response:
        return jsonify(state.list_instances(request.args))

    actions = {
        spec.INSTANCE_START_PATH: state.start,
        spec.INSTANCE_STOP_PATH: state.stop,
        spec.INSTANCE_RESTART_PATH: state.restart,
        spec.INSTANCE_DELETE_PATH: state.delete,
        spec.INSTANCE_MIGRATE_PATH: state.migrate,
    }

    def action() -> Response:
        return jsonify(actions[_endpoint()](_required(_json_body(), spec.INSTANCE_ID_PARAM)))

    for path in actions:
        api.add_url_rule(path, endpoint=path.strip("/").replace("/", "_"), view_func=action, methods=["POST"])
    return api


def _admin_blueprint(state: SimState) -> Blueprint:
    admin = Blueprint("sim_admin", __name__, url_prefix=ADMIN_PREFIX)

    @admin.post("/inject")
    def inject() -> Response | tuple[Response, int]:
        try:
            state.inject(request.get_json(force=True, silent=True) or {})
        except (ValueError, KeyError, TypeError, SimApiError) as exc:
            return jsonify({"error": str(exc)}), 400
        return jsonify(state.faults.snapshot())

    @admin.get("/inject")
    def faults() -> Response:
        return jsonify(state.faults.snapshot())

    @admin.get("/ledger")
    def ledger() -> Response:
        return jsonify({"calls": state.calls()})

    @admin.get("/instances")
    def instances() -> Response:
        return jsonify({"instances": state.instances_ledger()})

    @admin.post("/reset")
    def reset() -> Response:
        state.reset()
        return jsonify({})

    return admin


def create_app(state: SimState) -> Flask:
    """The WSGI app; serve it threaded (werkzeug `make_server`), since lost responses need its socket."""
    app = Flask("gpujobs.novita.simulator")
    app.register_blueprint(_api_blueprint(state))
    app.register_blueprint(_admin_blueprint(state))

    @app.errorhandler(SimApiError)
    def _api_error(exc: SimApiError) -> Response:
        return error_response(exc.http_status, exc.reason, exc.message)

    return app

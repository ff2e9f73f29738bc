"""The simulator's Flask app: the Novita API under `/gpu-instance/openapi/v1` plus admin routes under `/_sim`.

API calls pass, in order: injected latency, an injected proxy HTML 404, bearer auth, injected errors, the
handler, then (for a successful POST) an injected lost response, and finally the ledger. Admin routes need
no key and are not recorded, so tests count only the calls the client made.

A path or method the API does not serve gets, behind the same auth check, Novita's JSON envelope (404
NOT_FOUND, or 405 METHOD_NOT_ALLOWED on a known path) and a ledger entry marked `unknown`; so does any call
outside both prefixes (answered with the web server's HTML 404, as a wrong base URL would be). Tests assert
`NovitaSimulator.unknown_calls() == []` to prove the client made no wrong call.

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

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from gpujobs.novita import spec
from gpujobs.novita.sim.state import SimState
from gpujobs.novita.sim.validation import SimApiError, invalid

ADMIN_PREFIX = "/_sim"
UNKNOWN_ENDPOINT = "unknown_path"
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]

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
    nested: bool = False,
    retry_after_seconds: float | None = None,
) -> Response:
    """An error answer in Novita's envelope (§12), flat or nested, or an HTML page as a proxy would send."""
    if html:
        response = Response(HTML_ERROR_PAGE.format(status=http_status), mimetype="text/html")
    elif nested:
        # The shape another client of the live API parses: no reason field, so it leads the message.
        response = jsonify({"error": {"code": http_status, "message": f"{reason}: {message}"}})
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

    def envelope(http_status: int, reason: str, message: str, **options: Any) -> Response:
        return error_response(
            http_status, reason, message, nested=state.faults.nested_error_envelope, **options
        )

    @api.before_request
    def _gate() -> Response | None:
        g.started, g.injected, g.lost = time.monotonic(), False, False
        if state.faults.latency_seconds:
            time.sleep(state.faults.latency_seconds)
        proxy = state.faults.take_proxy_failure(_endpoint())
        if proxy is not None:
            g.injected = True
            return error_response(proxy.status, proxy.reason, "", html=True)
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected_auth):
            if state.faults.auth_failure_status == 403:
                return envelope(403, "INVALID_API_KEY", "invalid api-key")
            return envelope(401, "UNAUTHORIZED", "API key is missing or incorrect")
        failure = state.faults.take_failure(_endpoint())
        if failure is None:
            return None
        g.injected = True
        return envelope(
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
                "unknown": request.endpoint == f"{api.name}.{UNKNOWN_ENDPOINT}",
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
        with state.lock:
            return jsonify(state.account.get_template(_required(request.args, spec.TEMPLATE_ID_PARAM)))

    @api.get(spec.REGISTRY_AUTHS_PATH)
    def registry_auths() -> Response:
        with state.lock:
            return jsonify({"data": state.catalog.auths_json()})

    @api.get(spec.CPU_PRODUCTS_PATH)
    def cpu_products() -> Response:
        with state.lock:
            return jsonify({"data": state.account.cpu_products(request.args)})

    @api.get(spec.TEMPLATES_PATH)
    def templates() -> Response:
        with state.lock:
            return jsonify(state.account.list_templates(request.args))

    @api.get(spec.NETWORK_STORAGES_PATH)
    def network_storages() -> Response:
        with state.lock:
            return jsonify(state.account.list_storages(request.args))

    instance_writes = {
        spec.INSTANCE_EDIT_PATH: state.edit,
        spec.INSTANCE_UPGRADE_PATH: state.upgrade,
        spec.INSTANCE_RENEW_PATH: state.renew,
        spec.INSTANCE_TO_MONTHLY_PATH: state.to_monthly,
    }

    def instance_write() -> Response:
        return jsonify(instance_writes[_endpoint()](_json_body()))

    for path in instance_writes:
        api.add_url_rule(
            path, endpoint=path.strip("/").replace("/", "_"), view_func=instance_write, methods=["POST"]
        )

    in_use = {
        spec.REGISTRY_AUTH_DELETE_PATH: lambda auth_id: state.uses(auth_id=auth_id),
        spec.NETWORK_STORAGE_DELETE_PATH: lambda storage_id: state.uses(storage_id=storage_id),
    }
    account_writes = {
        spec.TEMPLATE_CREATE_PATH: state.account.create_template,
        spec.TEMPLATE_DELETE_PATH: state.account.delete_template,
        spec.REGISTRY_AUTH_SAVE_PATH: state.account.save_auth,
        spec.REGISTRY_AUTH_DELETE_PATH: lambda body: state.account.delete_auth(body, in_use[_endpoint()]),
        spec.NETWORK_STORAGE_CREATE_PATH: state.account.create_storage,
        spec.NETWORK_STORAGE_UPDATE_PATH: state.account.update_storage,
        spec.NETWORK_STORAGE_DELETE_PATH: lambda body: state.account.delete_storage(
            body, in_use[_endpoint()]
        ),
    }

    def account_write() -> Response:
        body = _json_body()
        with state.lock:
            return jsonify(account_writes[_endpoint()](body))

    for path in account_writes:
        api.add_url_rule(
            path, endpoint=path.strip("/").replace("/", "_"), view_func=account_write, methods=["POST"]
        )

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

    @api.route("/<path:_unknown>", endpoint=UNKNOWN_ENDPOINT, methods=ANY_METHOD)
    def unknown(_unknown: str) -> Response:
        known = [
            rule
            for rule in current_app.url_map.iter_rules()
            if rule.rule == request.path and rule.endpoint != f"{api.name}.{UNKNOWN_ENDPOINT}"
        ]
        if known:
            allowed = sorted(
                {method for rule in known for method in rule.methods or ()} - {"HEAD", "OPTIONS"}
            )
            return envelope(
                405, "METHOD_NOT_ALLOWED", f"{request.method} {_endpoint()}: use {', '.join(allowed)}"
            )
        return envelope(404, "NOT_FOUND", f"no such API path {request.method} {_endpoint()}")

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
        return error_response(
            exc.http_status, exc.reason, exc.message, nested=state.faults.nested_error_envelope
        )

    @app.after_request
    def _outside(response: Response) -> Response:
        """A call outside the API and admin prefixes (a wrong base URL) is a wrong call: in the ledger too."""
        if request.blueprint is None and not request.path.startswith(ADMIN_PREFIX):
            state.record_call(
                {
                    "method": request.method,
                    "path": request.path,
                    "endpoint": request.path,
                    "status": response.status_code,
                    "lost": False,
                    "injected": False,
                    "unknown": True,
                    "at": state.clock(),
                    "elapsed_ms": 0.0,
                    "user_agent": request.headers.get("User-Agent", ""),
                    "content_type": request.headers.get("Content-Type", ""),
                }
            )
        return response

    return app

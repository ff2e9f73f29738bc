"""``/openapi.json`` and ``/docs``: the generated OpenAPI document, and Swagger UI to read and try it.

Swagger UI's files come from the ``flask-swagger-ui`` wheel (its ``dist``), served from here: no CDN,
so the reference works on a network without internet access. Only its assets are used, not its
blueprint, so the page stays at ``/docs`` (documented in the spec itself), with a config of ours:
no call to the public spec validator, the API key kept across reloads, operations grouped by tag.
"Try it" sends ``Authorization: Bearer <key>`` once the key is entered under "Authorize" (the
document's ``bearerAuth`` scheme), to this same server.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template_string,
    send_from_directory,
    url_for,
)
from flask.typing import ResponseReturnValue

from gpujobs import __version__
from gpujobs.api.openapi import build_spec, operation

bp = Blueprint("docs", __name__)

TAG = "docs"
API_TITLE = "gpujobs API"
SWAGGER_UI_DIST = str(files("flask_swagger_ui") / "dist")
ASSET_MAX_AGE_SECONDS = 24 * 60 * 60

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{{ asset('swagger-ui.css') }}">
<link rel="stylesheet" href="{{ asset('index.css') }}">
<link rel="icon" type="image/png" href="{{ asset('favicon-32x32.png') }}" sizes="32x32">
<link rel="icon" type="image/png" href="{{ asset('favicon-16x16.png') }}" sizes="16x16">
</head><body>
<div id="swagger-ui"></div>
<script src="{{ asset('swagger-ui-bundle.js') }}"></script>
<script src="{{ url_for('docs.swagger_initializer') }}"></script>
</body></html>
"""

# Swagger UI's options (https://swagger.io/docs/open-source-tools/swagger-ui/usage/configuration/).
SWAGGER_UI_OPTIONS: dict[str, Any] = {
    "dom_id": "#swagger-ui",
    "layout": "BaseLayout",
    "deepLinking": True,
    "docExpansion": "list",  # tags open, operations closed
    "tagsSorter": "alpha",
    "filter": True,
    "persistAuthorization": True,
    "displayRequestDuration": True,
    "validatorUrl": None,  # the default asks validator.swagger.io, which an offline network cannot reach
}


def spec() -> dict[str, Any]:
    """The app's OpenAPI document, built once (routes do not change after start-up)."""
    extensions = current_app.extensions
    if "gpujobs_openapi" not in extensions:
        extensions["gpujobs_openapi"] = build_spec(current_app, title=API_TITLE, version=__version__)
    return extensions["gpujobs_openapi"]


@bp.get("/openapi.json")
@operation(summary="This API's OpenAPI document", tag=TAG, responses={200: "OpenAPI 3.1 (JSON)"}, auth=False)
def openapi_json() -> Response:
    """Generated from the views' own models, so it matches what they accept and answer."""
    return jsonify(spec())


@bp.get("/docs")
@operation(summary="This API's reference (Swagger UI)", tag=TAG, responses={200: "an HTML page"}, auth=False)
def docs() -> str:
    """Every operation by tag, with its parameters, bodies, examples and answers; "try it" included."""
    return render_template_string(PAGE, title=spec()["info"]["title"], asset=_asset_url)


@bp.get("/docs/")
def docs_with_slash() -> ResponseReturnValue:
    """The reference's address as people type it: a permanent redirect to ``/docs`` (not in the spec)."""
    return redirect(url_for("docs.docs"), code=308)


@bp.get("/docs/swagger-initializer.js")
def swagger_initializer() -> Response:
    """Starts Swagger UI on this server's document (a script file, so the page has no inline script)."""
    options = {**SWAGGER_UI_OPTIONS, "url": url_for("docs.openapi_json")}
    script = (
        f"window.onload = function () {{\n"
        f"  var options = {json.dumps(options)};\n"
        f"  options.presets = [SwaggerUIBundle.presets.apis];\n"
        f"  window.ui = SwaggerUIBundle(options);\n"
        f"}};\n"
    )
    return Response(script, mimetype="text/javascript")


@bp.get("/docs/assets/<path:name>")
def swagger_asset(name: str) -> Response:
    """Swagger UI's own files, from the installed package (``send_from_directory`` refuses ``..``)."""
    return send_from_directory(SWAGGER_UI_DIST, name, max_age=ASSET_MAX_AGE_SECONDS)


def _asset_url(name: str) -> str:
    return url_for("docs.swagger_asset", name=name)

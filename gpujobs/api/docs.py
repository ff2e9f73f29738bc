"""``/openapi.json`` and ``/docs``: the generated OpenAPI document, and a readable page rendered from it.

The page is plain server-side HTML (no JavaScript, no CDN: deployments may have no internet access).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template_string
from markupsafe import Markup, escape

from gpujobs import __version__
from gpujobs.api.openapi import build_spec, operation

bp = Blueprint("docs", __name__)

TAG = "docs"
API_TITLE = "gpujobs API"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ spec.info.title }}</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem }
h2 { border-bottom: 1px solid #ccc; margin-top: 2.5rem }
code, pre { font: 13px ui-monospace, monospace }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto }
table { border-collapse: collapse; margin: .4rem 0 }
td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; vertical-align: top }
.op { margin: 1.2rem 0; padding: .6rem .8rem; border-left: 4px solid #4a7 } .method { font-weight: bold }
.open { color: #a60 }
</style></head><body>
<h1>{{ spec.info.title }} <small>{{ spec.info.version }}</small></h1>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI {{ spec.openapi }}).
Send <code>Authorization: Bearer &lt;API key&gt;</code> unless marked <span class="open">no auth</span>;
errors are <code>application/problem+json</code>.</p>
{% for path, methods in spec.paths.items() %}{% for method, op in methods.items() %}
<div class="op" id="{{ op.operationId }}">
<div><span class="method">{{ method|upper }}</span> <code>{{ path }}</code> — {{ op.summary }}
{% if not op.security %}<span class="open">(no auth)</span>{% endif %}</div>
{% if op.description %}<p>{{ op.description }}</p>{% endif %}
{% if op.parameters %}<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th><th></th></tr>
{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code></td><td>{{ p.in }}</td><td>{{ p.required }}</td>
<td><code>{{ p.schema|tojson }}</code></td><td>{{ p.description }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}{% for type, body in op.requestBody.content.items() %}
<p>Body ({{ type }}): {{ link(body.schema) }}</p>{% endfor %}{% endif %}
<table>{% for status, response in op.responses.items() %}
<tr><td>{{ status }}</td><td>{{ response.description }}</td>
<td>{% for body in (response.content or {}).values() %}{{ link(body.schema) }}{% endfor %}</td></tr>
{% endfor %}</table>
</div>{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in spec.components.schemas.items() %}<h3 id="schema-{{ name }}">{{ name }}</h3>
<pre>{{ pretty(schema) }}</pre>{% endfor %}
</body></html>
"""


def spec() -> dict[str, Any]:
    """The app's OpenAPI document, built once (routes do not change after start-up)."""
    extensions = current_app.extensions
    if "gpujobs_openapi" not in extensions:
        extensions["gpujobs_openapi"] = build_spec(current_app, title=API_TITLE, version=__version__)
    return extensions["gpujobs_openapi"]


def _link(schema: dict[str, Any]) -> Any:
    name = schema.get("$ref", "").rsplit("/", 1)[-1]
    return (
        Markup(f'<a href="#schema-{escape(name)}">{escape(name)}</a>') if name else escape(json.dumps(schema))
    )


@bp.get("/openapi.json")
@operation(summary="This API's OpenAPI document", tag=TAG, responses={200: "OpenAPI 3.1 (JSON)"}, auth=False)
def openapi_json() -> Response:
    """Generated from the views' own models, so it matches what they accept and answer."""
    return jsonify(spec())


@bp.get("/docs")
@operation(summary="This API's reference, as HTML", tag=TAG, responses={200: "an HTML page"}, auth=False)
def docs() -> str:
    """Every operation with its parameters, bodies and answers, and every schema."""
    return render_template_string(PAGE, spec=spec(), link=_link, pretty=lambda s: json.dumps(s, indent=2))

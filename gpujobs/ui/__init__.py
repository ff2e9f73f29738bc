"""``/ui``: the operator dashboard, server-rendered from the same database as the API."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

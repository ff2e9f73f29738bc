"""``/v1/instances``: GPU instances, provisioned and managed through jobs."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("instances", __name__, url_prefix="/v1/instances")

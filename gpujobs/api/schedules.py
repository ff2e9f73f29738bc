"""``/v1/schedules``: cron schedules that submit jobs."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("schedules", __name__, url_prefix="/v1/schedules")

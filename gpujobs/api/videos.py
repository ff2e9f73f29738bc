"""``/v1/videos``: upload a video for encoding, follow it, download the result."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("videos", __name__, url_prefix="/v1/videos")

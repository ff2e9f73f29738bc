"""Real video files made by the bundled FFmpeg, and the storage directory the API and workers share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from support.media import CODECS_BY_SUFFIX, make_clip

from gpujobs.definitions import video


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clip per container, plus an audio-only MP4, made once for the run."""
    directory = tmp_path_factory.mktemp("clips")
    made = {suffix: make_clip(directory / f"clip{suffix}") for suffix in CODECS_BY_SUFFIX}
    made["audio"] = make_clip(directory / "sound.mp4", audio_only=True)
    return {key.lstrip("."): path for key, path in made.items()}


@pytest.fixture
def uploads(app: Flask, tenant: dict[str, str]) -> Callable[[], set[str]]:
    """What the tenant's uploads directory holds now (shared by the whole run, so tests compare sets)."""
    directory = video.upload_dir(app.config["GPUJOBS_STORAGE_DIR"], tenant["id"])
    return lambda: {path.name for path in directory.glob("*")} if directory.is_dir() else set()

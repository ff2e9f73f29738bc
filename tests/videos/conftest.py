"""Real video files made by the bundled FFmpeg, and the storage directory the API and workers share."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gpujobs.definitions import video

# Codecs a camera or an editor would put in each container.
CODECS_BY_SUFFIX = {
    ".mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    ".mov": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    ".mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"],
}


def make_clip(
    path: Path, seconds: float = 2, size: str = "320x240", rate: int = 15, audio_only: bool = False
) -> Path:
    """A real clip: FFmpeg's test pattern and a sine tone, in the container the suffix names."""
    sources = (
        [] if audio_only else ["-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate={rate}"]
    )
    sources += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    codecs = CODECS_BY_SUFFIX[path.suffix] + ([] if audio_only else ["-pix_fmt", "yuv420p"])
    command = [video.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *sources]
    subprocess.run([*command, *codecs, "-shortest", str(path)], check=True, timeout=60)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clip per container, plus an audio-only MP4, made once for the run."""
    directory = tmp_path_factory.mktemp("clips")
    made = {suffix: make_clip(directory / f"clip{suffix}") for suffix in CODECS_BY_SUFFIX}
    made["audio"] = make_clip(directory / "sound.mp4", audio_only=True)
    return {key.lstrip("."): path for key, path in made.items()}


@pytest.fixture
def uploads(app: Flask) -> Callable[[], set[str]]:
    """What the uploads directory holds now (it is shared by the whole run, so tests compare sets)."""
    directory = video.upload_dir(app.config["GPUJOBS_STORAGE_DIR"])
    return lambda: {path.name for path in directory.glob("*")} if directory.is_dir() else set()

"""encode.video@1 run directly on real files made by FFmpeg in the test: transcode, progress, failures,
cancellation and the path rules."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pydantic import ValidationError
from support.media import ffmpeg_pids_writing_to, make_clip
from support.polling import wait_for

from gpujobs.definitions import video
from gpujobs.exceptions import JobCancelled, PermanentError


def _streams(path: Path) -> str:
    """FFmpeg's own description of a file's streams, to check codecs independently of the handler."""
    completed = subprocess.run(
        [video.ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.stderr


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten seconds that take far longer than the test waits to encode at 4k/high."""
    return make_clip(tmp_path_factory.mktemp("clips") / "long.mp4", seconds=10, size="640x480", rate=30)


@pytest.fixture
def uploads(flask_app: Flask, tmp_path: Path) -> Path:
    directory = video.upload_dir(tmp_path, "test")  # RecordingContext's tenant
    directory.mkdir(parents=True)
    return directory


def test_a_clip_is_encoded_to_720p_mp4_with_progress(run_job, ctx, uploads, tmp_path):
    make_clip(uploads / "clip_1.mp4", seconds=2, size="320x240", rate=15)
    result = run_job("encode.video", {"inputFile": "clip_1.mp4", "resolution": "720p", "format": "mp4"}, ctx)
    target = video.output_path(tmp_path, ctx.job_id, "mp4")
    assert result["outputFile"] == f"{ctx.job_id}.mp4" and result["outputPath"] == f"outputs/{ctx.job_id}.mp4"
    assert (result["width"], result["height"]) == (960, 720)  # 4:3 fitted into 1280x720
    assert result["durationSeconds"] == pytest.approx(2.0, abs=0.1)
    assert result["sizeBytes"] == target.stat().st_size > 0
    assert (result["format"], result["quality"]) == ("mp4", "medium")
    streams = _streams(target)
    assert "Video: h264" in streams and "960x720" in streams and "Audio: aac" in streams
    assert ctx.percents[0] == 0 and ctx.percents[-1] == 100 and ctx.percents == sorted(ctx.percents)
    assert len(ctx.percents) >= 2 and sorted(os.listdir(target.parent)) == [target.name]


def test_a_portrait_clip_is_encoded_to_webm_with_vp9_and_opus(run_job, ctx, uploads, tmp_path):
    make_clip(uploads / "portrait.mov", seconds=1, size="200x320", rate=10)
    params = {"inputFile": "portrait.mov", "resolution": "720p", "format": "webm", "quality": "low"}
    result = run_job("encode.video", params, ctx)
    assert (result["width"], result["height"]) == (720, 1152)  # 5:8 fitted into 720x1280
    streams = _streams(video.output_path(tmp_path, ctx.job_id, "webm"))
    assert "Video: vp9" in streams and "Audio: opus" in streams


@pytest.mark.parametrize(
    ("width", "height", "resolution", "expected"),
    [
        (320, 240, "720p", (960, 720)),
        (1920, 1080, "720p", (1280, 720)),
        (1000, 563, "1080p", (1918, 1080)),
        (1080, 1920, "4k", (2160, 3840)),
        (4000, 3000, "1080p", (1440, 1080)),
    ],
)
def test_target_sizes_keep_the_aspect_ratio_with_even_sides(width, height, resolution, expected):
    assert video.target_size(width, height, resolution) == expected


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 1000, "half"], ids=["garbage", "truncated"])
def test_a_corrupt_upload_fails_permanently_with_a_short_reason(run_job, ctx, uploads, tmp_path, content):
    good = make_clip(tmp_path / "good.mp4", seconds=2, size="320x240", rate=15)
    data = good.read_bytes()[: good.stat().st_size // 2] if content == "half" else content
    (uploads / "broken.mp4").write_bytes(data)
    with pytest.raises(PermanentError) as raised:
        run_job("encode.video", {"inputFile": "broken.mp4"}, ctx)
    assert len(str(raised.value)) < 800 and str(tmp_path) not in str(raised.value)
    assert not video.output_path(tmp_path, ctx.job_id, "mp4").exists()


def test_a_file_whose_content_is_not_its_extensions_container_never_reaches_ffmpeg(
    run_job, ctx, uploads, tmp_path, monkeypatch
):
    make_clip(tmp_path / "real.mkv", seconds=1, size="160x120", rate=10)
    (uploads / "renamed.mp4").write_bytes((tmp_path / "real.mkv").read_bytes())
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: pytest.fail("FFmpeg ran on a mismatched file"))
    with pytest.raises(PermanentError, match=r"renamed\.mp4 is not a mp4 video"):
        run_job("encode.video", {"inputFile": "renamed.mp4"}, ctx)


def test_ffmpeg_reads_local_files_only_with_the_pinned_demuxer(uploads):
    clip = make_clip(uploads / "clip_p.mov", seconds=1, size="160x120", rate=10)
    args = video.input_args(clip)
    assert args == ["-protocol_whitelist", "file", "-f", "mov", "-i", str(clip)]
    # a network URL (as a crafted file could name one) is refused by the whitelist
    whitelist = args[:2]
    command = [video.ffmpeg_exe(), "-hide_banner", *whitelist, "-i", "http://127.0.0.1:9/x.mp4"]
    stderr = subprocess.run(command, capture_output=True, text=True, env=video.ffmpeg_env()).stderr
    assert "not on whitelist" in stderr


def test_ffmpeg_gets_no_secret_of_the_service_in_its_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:secret@db/x")
    monkeypatch.setenv("NOVITA_API_KEY", "sk_secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = video.ffmpeg_env()
    assert set(env) <= set(video.FFMPEG_ENV_NAMES) and env["LANG"] == "C.UTF-8"
    assert "secret" not in repr(env)


def test_only_a_bounded_share_of_ffmpegs_error_output_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "STDERR_MAX_BYTES", 1024)
    with open(tmp_path / "stderr", "w+b") as stderr:
        stderr.write(b"head\n" + b"x" * 100_000 + b"\ntail")
        stderr.flush()
        head, tail = video._read_bounded(stderr, tail=False), video._read_bounded(stderr, tail=True)
    assert len(head) == len(tail) == 1024
    assert head.startswith("head") and tail.endswith("tail")


class _WatchingContext:
    """Records which ffmpeg processes were alive when cancellation was requested."""

    def __init__(self, ctx: Any, outputs: Path) -> None:
        self.ctx, self.outputs = ctx, outputs
        self.pids_at_cancel: list[int] = []
        self.groups_at_cancel: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ctx, name)

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        self.ctx.progress(percent, message, **data)
        if self.ctx.cancelled and not self.pids_at_cancel:
            self.pids_at_cancel = ffmpeg_pids_writing_to(self.outputs)
            self.groups_at_cancel = [os.getpgid(pid) for pid in self.pids_at_cancel]


def test_cancelling_kills_ffmpeg_and_leaves_no_partial_file(run_job, make_ctx, uploads, tmp_path, long_clip):
    shutil.copy(long_clip, uploads / "long.mp4")
    ctx = _WatchingContext(make_ctx(cancel_after_progress=2), video.output_path(tmp_path, "x", "mp4").parent)
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        run_job("encode.video", {"inputFile": "long.mp4", "resolution": "4k", "quality": "high"}, ctx)
    assert time.monotonic() - started < 10
    assert 0 < ctx.ctx.percents[1] < 100  # ffmpeg had reported real progress before the cancel
    assert len(ctx.pids_at_cancel) == 1 and ffmpeg_pids_writing_to(ctx.outputs) == []
    assert ctx.groups_at_cancel == ctx.pids_at_cancel  # FFmpeg led a process group of its own, killed whole
    assert os.listdir(ctx.outputs) == []


def test_an_encode_past_its_timeout_is_killed(run_job, ctx, uploads, tmp_path, long_clip, monkeypatch):
    shutil.copy(long_clip, uploads / "long.mp4")
    monkeypatch.setattr(video, "ENCODE_TIMEOUT_SECONDS", 0.5)
    with pytest.raises(PermanentError, match="timeout"):
        run_job("encode.video", {"inputFile": "long.mp4", "resolution": "4k", "quality": "high"}, ctx)
    outputs = video.output_path(tmp_path, ctx.job_id, "mp4").parent
    assert ffmpeg_pids_writing_to(outputs) == [] and os.listdir(outputs) == []


def test_each_attempt_encodes_to_its_own_file_and_leaves_a_stale_attempts_file_alone(
    run_job, ctx, uploads, tmp_path
):
    make_clip(uploads / "clip_2.mp4", seconds=1, size="160x120", rate=10)
    target = video.output_path(tmp_path, ctx.job_id, "mp4")
    target.parent.mkdir(parents=True)
    stale = target.with_name(f"{ctx.job_id}.1.part.mp4")  # attempt 1, still encoding after losing its lease
    stale.write_bytes(b"attempt 1 at work")
    ctx.attempt = 2
    run_job("encode.video", {"inputFile": "clip_2.mp4"}, ctx)
    assert stale.read_bytes() == b"attempt 1 at work"
    assert sorted(os.listdir(target.parent)) == sorted([stale.name, target.name])


def test_an_attempt_that_lost_the_job_does_not_publish_its_output(run_job, ctx, uploads, tmp_path):
    make_clip(uploads / "clip_3.mp4", seconds=1, size="160x120", rate=10)
    target = video.output_path(tmp_path, ctx.job_id, "mp4")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"published by the newer attempt")
    ctx.holds_job = False
    with pytest.raises(JobCancelled, match="lost the job"):
        run_job("encode.video", {"inputFile": "clip_3.mp4"}, ctx)
    assert target.read_bytes() == b"published by the newer attempt"
    assert os.listdir(target.parent) == [target.name]  # its own partial file is gone too


# Runs run_ffmpeg in a process of its own, as a worker's pool process would, on a long 4k encode.
_ENCODER = """
import os
from gpujobs.definitions import video

class Context:
    job_id, attempt = "x", 1
    def progress(self, *args, **kwargs): pass
    def cancel_requested(self): return False

scale = ["-vf", "scale=3840:2160", "-c:v", "libx264", "-preset", "veryslow", "-f", "mp4"]
video.run_ffmpeg(Context(), ["-y", "-i", os.environ["SOURCE"], *scale, os.environ["TARGET"]], None)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_ffmpeg_dies_with_a_worker_process_killed_by_sigkill(tmp_path, long_clip):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    env = dict(os.environ, SOURCE=str(long_clip), TARGET=str(outputs / "x.mp4"))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    encoder = subprocess.Popen([sys.executable, "-c", _ENCODER], env=env)
    try:
        ffmpeg = wait_for(lambda: ffmpeg_pids_writing_to(outputs), timeout=30)
        encoder.kill()  # no finally, no atexit: only the kernel can stop FFmpeg now
        encoder.wait()
        wait_for(lambda: ffmpeg_pids_writing_to(outputs) == [], timeout=5)
    finally:
        for pid in ffmpeg_pids_writing_to(outputs):
            os.kill(pid, signal.SIGKILL)
    assert len(ffmpeg) == 1


@pytest.mark.parametrize(
    "name",
    [
        "../secret.mp4",
        "a/b.mp4",
        "/etc/passwd",
        "clip.txt",
        ".mp4",
        "clip.mp4\n",
        "clip.MP4",
        "x" * 65 + ".mp4",
    ],
)
def test_input_files_that_are_not_bare_upload_names_are_refused_at_validation(run_job, name):
    with pytest.raises(ValidationError):
        run_job("encode.video", {"inputFile": name})


def test_a_symlink_out_of_uploads_and_a_missing_upload_are_refused(run_job, uploads, tmp_path):
    outside = make_clip(tmp_path / "outside.mp4", seconds=1, size="160x120", rate=10)
    (uploads / "link.mp4").symlink_to(outside)
    with pytest.raises(PermanentError, match="not an upload name"):
        run_job("encode.video", {"inputFile": "link.mp4"})
    with pytest.raises(PermanentError, match="does not exist"):
        run_job("encode.video", {"inputFile": "nothing.mp4"})


def test_another_tenants_upload_does_not_exist_for_a_job(run_job, uploads, tmp_path):
    make_clip(video.upload_dir(tmp_path, "other") / "theirs.mp4", seconds=1, size="160x120", rate=10)
    with pytest.raises(PermanentError, match=r"upload 'theirs\.mp4' does not exist"):
        run_job("encode.video", {"inputFile": "theirs.mp4"})


def test_output_paths_are_only_made_from_safe_job_ids_and_known_formats(tmp_path):
    assert video.output_path(tmp_path, "abc-123", "webm") == tmp_path / "outputs" / "abc-123.webm"
    assert video.upload_dir(tmp_path, "t-1") == tmp_path / "uploads" / "t-1"
    with pytest.raises(ValueError):
        video.upload_dir(tmp_path, "../t")
    for job_id, fmt in (("../x", "mp4"), ("a/b", "mp4"), ("ok", "exe"), ("", "mp4")):
        with pytest.raises(ValueError):
            video.output_path(tmp_path, job_id, fmt)
    assert "mov" in video.ALLOWED_UPLOAD_EXTENSIONS

"""encode.video@1: transcode an uploaded video with the FFmpeg binary that ships in imageio-ffmpeg.

Params can only name a bare file in the tenant's own ``<storage>/uploads/<tenant id>/``; the output goes to
``<storage>/outputs/<job_id>.<format>``. Each attempt writes its own ``<job_id>.<attempt>.part.<format>``
(a stale attempt still encoding never shares or deletes a newer one's file), and renames it into place
only while it still holds the job (``JobContext.hold_job``), so a half-written file is never served and
an attempt that lost the job never publishes. FFmpeg reports its position on stdout (``-progress
pipe:1``), which becomes job progress. It runs in its own process group, killed as a whole on cancel,
timeout or any exception (a soft time limit, a warm shutdown); on Linux it also dies with the worker
process that started it, even one killed with SIGKILL (``PR_SET_PDEATHSIG``).

Uploads are untrusted media, so FFmpeg touches them only here, in a worker, never in the web process:
it may open local files only (``-protocol_whitelist file``), reads the input with the one demuxer its
first bytes and extension agree on (``-f``; anything else is refused before FFmpeg starts), runs under
time limits with a minimal environment (no secret of the service), and at most ``STDERR_MAX_BYTES`` of
its error output is ever read back.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

import imageio_ffmpeg
from flask import current_app
from pydantic import Field

from gpujobs.exceptions import InvalidField, JobCancelled, PermanentError, TransientError
from gpujobs.registry import JobContext, Params, job_definition

ALLOWED_UPLOAD_EXTENSIONS = frozenset({"mp4", "mov", "mkv", "webm", "avi"})
OutputFormat = Literal["mp4", "webm"]
Resolution = Literal["720p", "1080p", "4k"]
Quality = Literal["low", "medium", "high"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
# A bare name: no separators, no dots but the extension's, so it cannot leave the uploads directory.
INPUT_FILE_PATTERN = rf"^[A-Za-z0-9_-]{{1,64}}\.({'|'.join(sorted(ALLOWED_UPLOAD_EXTENSIONS))})$"
UPLOADS_DIR_NAME = "uploads"
OUTPUTS_DIR_NAME = "outputs"
ENCODE_TIMEOUT_SECONDS = 2 * 60 * 60
PROBE_TIMEOUT_SECONDS = 30
PROGRESS_STEP_PERCENT = 5.0
PROGRESS_INTERVAL_SECONDS = 1.0
CANCEL_POLL_INTERVAL_SECONDS = 0.25
STDERR_TAIL_LINES = 5
STDERR_TAIL_CHARS = 600
# The most of FFmpeg's error output ever read into memory: the head for a probe (the stream description
# comes first), the tail after an encode (the error comes last).
STDERR_MAX_BYTES = 64 * 1024
# The only variables FFmpeg gets: none of the service's secrets (database, broker, Novita, signing keys).
FFMPEG_ENV_NAMES = ("PATH", "LANG", "TMPDIR")
SNIFF_BYTES = 12
# The container each accepted extension promises, recognised by its first bytes.
CONTAINER_BY_EXTENSION = {"mp4": "isobmff", "mov": "isobmff", "mkv": "ebml", "webm": "ebml", "avi": "riff"}
# ISO base media (MP4, QuickTime) files open with a box: size, then a type; QuickTime allows a few more.
ISOBMFF_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
# The FFmpeg demuxer pinned for each container (-f): FFmpeg never guesses a format from the content.
DEMUXER_BY_CONTAINER = {"isobmff": "mov", "ebml": "matroska", "riff": "avi"}
MIN_OUTPUT_DURATION_RATIO = 0.9  # a shorter output means part of the input could not be decoded

# The box each resolution must fit in (turned for portrait video); aspect ratio is always kept.
RESOLUTION_BOXES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
# (CRF, preset, audio bitrate) for libx264/aac; CRF 23 "medium" is x264's own default trade-off.
X264_QUALITY = {
    "low": ("28", "veryfast", "96k"),
    "medium": ("23", "medium", "128k"),
    "high": ("18", "slow", "192k"),
}
# (CRF, cpu-used, audio bitrate) for libvpx-vp9/libopus in constant-quality mode (-b:v 0).
VP9_QUALITY = {"low": ("40", "5", "64k"), "medium": ("33", "4", "96k"), "high": ("28", "2", "128k")}

_FFMPEG_FLAGS = ("-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1", "-nostats")
_SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_VIDEO_SIZE_RE = re.compile(r"Stream #\d+:\d+.*?: Video: .*?(?<![\w])(\d{2,5})x(\d{2,5})(?![\w])")
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


class EncodeVideoParams(Params):
    """Params of `encode.video@1`: the upload to transcode, and the output's format, size and quality."""

    inputFile: str = Field(
        pattern=INPUT_FILE_PATTERN,
        description="bare name of one of your uploads, as returned by POST /v1/videos/encode",
    )
    format: OutputFormat = Field(
        "mp4", description="output container and codecs: mp4 (H.264/AAC) or webm (VP9/Opus)"
    )
    resolution: Resolution = Field(
        "720p",
        description="the box the frame is scaled to fit (1280x720, 1920x1080 or 3840x2160, turned for "
        "portrait video), keeping its aspect ratio",
    )
    quality: Quality = Field(
        "medium",
        description="constant-quality level: higher gives a sharper, larger file and a slower encode",
    )


@dataclass(frozen=True)
class MediaInfo:
    """What encoding needs to know about a file: its displayed size and its length."""

    width: int
    height: int
    duration_seconds: float | None


def upload_dir(storage_dir: str | os.PathLike[str], tenant_id: str) -> Path:
    """Where a tenant's uploads go: a directory per tenant, so an upload only exists for its owner."""
    if not _SAFE_JOB_ID.fullmatch(tenant_id):
        raise ValueError(f"no upload directory for tenant {tenant_id!r}")
    return Path(storage_dir) / UPLOADS_DIR_NAME / tenant_id


def output_path(storage_dir: str | os.PathLike[str], job_id: str, fmt: str) -> Path:
    """Where a job's encoded file lives, derived from the job id so nothing user-supplied names it."""
    if not _SAFE_JOB_ID.fullmatch(job_id) or fmt not in OUTPUT_FORMATS:
        raise ValueError(f"no output path for job {job_id!r} in format {fmt!r}")
    return Path(storage_dir) / OUTPUTS_DIR_NAME / f"{job_id}.{fmt}"


def input_path(storage_dir: str | os.PathLike[str], tenant_id: str, input_file: str) -> Path:
    """Resolve the tenant's upload by name, refusing anything that is not a plain file in its directory.

    Another tenant's upload is "does not exist", word for word the answer for a name nobody uploaded.
    """
    uploads = upload_dir(storage_dir, tenant_id).resolve()
    path = (uploads / input_file).resolve()  # resolve() follows symlinks: a link out is caught too
    if not re.fullmatch(INPUT_FILE_PATTERN, input_file) or not path.is_relative_to(uploads):
        raise PermanentError(f"inputFile {input_file!r} is not an upload name")
    if not path.is_file():
        raise PermanentError(f"upload {input_file!r} does not exist")
    return path


def check_upload(tenant_id: uuid.UUID, params: dict[str, Any]) -> None:
    """At submission: InvalidField naming ``inputFile`` unless it is one of the tenant's uploads."""
    try:
        input_path(current_app.config["GPUJOBS_STORAGE_DIR"], str(tenant_id), params["inputFile"])
    except PermanentError as exc:
        raise InvalidField("inputFile", str(exc)) from None


def container_of(head: bytes) -> str | None:
    """The container family a file's first bytes announce, or None."""
    if head[4:8] in ISOBMFF_FIRST_BOXES:
        return "isobmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska and WebM
        return "ebml"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "riff"
    return None


def input_args(path: Path) -> list[str]:
    """FFmpeg's arguments to read ``path``: local files only, with the demuxer its extension and content
    agree on; PermanentError for any other file, before FFmpeg sees it."""
    with open(path, "rb") as file:
        container = container_of(file.read(SNIFF_BYTES))
    expected = CONTAINER_BY_EXTENSION.get(path.suffix[1:].lower())
    if container is None or container != expected:
        raise PermanentError(f"{path.name} is not a {path.suffix[1:]} video (its content says otherwise)")
    return ["-protocol_whitelist", "file", "-f", DEMUXER_BY_CONTAINER[container], "-i", str(path)]


def ffmpeg_env() -> dict[str, str]:
    """The minimal environment FFmpeg runs with (``FFMPEG_ENV_NAMES`` taken from ours)."""
    return {name: os.environ[name] for name in FFMPEG_ENV_NAMES if name in os.environ}


def _read_bounded(stderr: IO[bytes], *, tail: bool) -> str:
    """At most ``STDERR_MAX_BYTES`` of a finished FFmpeg's error output: its head, or its tail."""
    if tail:
        stderr.seek(0, os.SEEK_END)
        stderr.seek(max(0, stderr.tell() - STDERR_MAX_BYTES))
    else:
        stderr.seek(0)
    return stderr.read(STDERR_MAX_BYTES).decode(errors="replace")


def target_size(width: int, height: int, resolution: str) -> tuple[int, int]:
    """Fit the frame in the resolution's box keeping its aspect ratio; encoders need even sides."""
    box_w, box_h = RESOLUTION_BOXES[resolution]
    if height > width:
        box_w, box_h = box_h, box_w
    scale = min(box_w / width, box_h / height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


@functools.cache
def ffmpeg_exe() -> str:
    """The bundled binary; a worker without it is broken, which another worker may not be."""
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise TransientError(f"ffmpeg is not available on this worker: {exc}") from exc


def probe(path: Path) -> MediaInfo:
    """Read size, rotation and duration from ffmpeg's stream description (no ffprobe in the wheel)."""
    inputs = input_args(path)  # refuses a mismatched file before FFmpeg is even looked up
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", *inputs]
    with tempfile.TemporaryFile() as stderr:
        try:
            subprocess.run(
                command,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=ffmpeg_env(),
                timeout=PROBE_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as exc:
            raise PermanentError(f"reading {path.name} took over {PROBE_TIMEOUT_SECONDS}s") from exc
        # ffmpeg exits 1 here ("at least one output file must be specified"); stderr is the description.
        description = _read_bounded(stderr, tail=False)
    size = _VIDEO_SIZE_RE.search(description)
    if size is None:
        raise PermanentError(f"{path.name} has no readable video stream: {_tail(description, path.parent)}")
    width, height = int(size[1]), int(size[2])
    rotation = _ROTATION_RE.search(description)
    if rotation and round(abs(float(rotation[1]))) % 180 == 90:
        width, height = height, width  # ffmpeg auto-rotates, so the frame we scale is turned
    duration = _DURATION_RE.search(description)
    seconds = int(duration[1]) * 3600 + int(duration[2]) * 60 + float(duration[3]) if duration else None
    return MediaInfo(width, height, seconds or None)


def _codec_args(fmt: str, quality: str) -> list[str]:
    if fmt == "mp4":
        crf, preset, audio = X264_QUALITY[quality]
        video = ["-c:v", "libx264", "-preset", preset, "-crf", crf]
        return [*video, "-c:a", "aac", "-b:a", audio, "-movflags", "+faststart", "-f", "mp4"]
    crf, cpu_used, audio = VP9_QUALITY[quality]
    video = ["-c:v", "libvpx-vp9", "-crf", crf, "-b:v", "0", "-deadline", "good", "-cpu-used", cpu_used]
    return [*video, "-row-mt", "1", "-c:a", "libopus", "-b:a", audio, "-f", "webm"]


def _tail(stderr: str, *hide_dirs: Path) -> str:
    """The last lines of ffmpeg's stderr, short and with our directories left out."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()][-STDERR_TAIL_LINES:]
    text = " | ".join(lines)
    for directory in hide_dirs:
        text = text.replace(f"{directory}{os.sep}", "")
    return text[-STDERR_TAIL_CHARS:] or "(no output)"


# prctl(2) option: the signal the kernel sends this process when the thread that forked it exits.
PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Any:
    """libc's prctl, looked up once in the parent: the forked child must not load anything."""
    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the forked child before exec: be SIGKILLed when the worker process that forked us dies.

    A worker process killed outright (SIGKILL, the OOM killer, a hard time limit) runs no cleanup, and
    FFmpeg would go on encoding for nobody, holding cores the next attempt needs. The parent may have
    died before the prctl took effect, hence the check. This runs between fork and exec while the
    parent has other threads (the lease heartbeat), so it only makes two system calls, through a
    ctypes function the parent already loaded.
    """
    _prctl()(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def dies_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that ties a child to this process's life (None off Linux, which has no prctl)."""
    if sys.platform != "linux":
        return None
    _prctl()  # resolved here, never in the child
    return functools.partial(_die_with_parent, os.getpid())


def _start_ffmpeg(command: list[str], stderr: IO[bytes]) -> subprocess.Popen[str]:
    """Start FFmpeg in a process group of its own (the unit we kill), tied to this process's life."""
    preexec = dies_with_this_process()
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=ffmpeg_env(),
        text=True,
        start_new_session=True,
        preexec_fn=preexec,  # see _die_with_parent
    )


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL FFmpeg's whole process group if it is still running, and reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Move ffmpeg's progress lines to a queue so the main loop can also watch the clock and cancel."""
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


class _Progress:
    """Turns ffmpeg's position into ctx.progress calls, at most every few percent or every second."""

    def __init__(self, ctx: JobContext, duration_seconds: float | None) -> None:
        self.ctx, self.duration_seconds = ctx, duration_seconds
        self.last_percent, self.last_time = 0.0, time.monotonic()

    def position(self, microseconds: str) -> None:
        if not self.duration_seconds or not microseconds.isdigit():
            return  # unknown length, or "N/A" before the first frame
        percent = min(99.0, int(microseconds) / 1e6 / self.duration_seconds * 100)
        now = time.monotonic()
        step = percent - self.last_percent
        if step >= PROGRESS_STEP_PERCENT or (step > 0 and now - self.last_time >= PROGRESS_INTERVAL_SECONDS):
            self.ctx.progress(round(percent, 1), "encoding", outTimeSeconds=int(microseconds) / 1e6)
            self.last_percent, self.last_time = percent, now


def run_ffmpeg(
    ctx: JobContext, args: list[str], duration_seconds: float | None, hide_dirs: tuple[Path, ...] = ()
) -> str:
    """Run ffmpeg to completion, reporting progress; kill it on cancellation or past the timeout.

    Returns the tail of ffmpeg's error output: a tolerated decoding error still explains a short output.
    """
    deadline = time.monotonic() + ENCODE_TIMEOUT_SECONDS
    command = [ffmpeg_exe(), *_FFMPEG_FLAGS, *args]
    with tempfile.TemporaryFile() as stderr:
        process = _start_ffmpeg(command, stderr)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        progress, next_cancel_check = _Progress(ctx, duration_seconds), 0.0
        try:
            while (line := _next_line(lines)) is not None:
                key, _, value = line.partition("=")
                if key in ("out_time_us", "out_time_ms"):  # both are microseconds (a historic ffmpeg quirk)
                    progress.position(value)
                if time.monotonic() >= next_cancel_check:  # the check may hit the database: not per line
                    next_cancel_check = time.monotonic() + CANCEL_POLL_INTERVAL_SECONDS
                    if ctx.cancel_requested():
                        raise JobCancelled(f"job {ctx.job_id}: encoding cancelled")
                if time.monotonic() > deadline:
                    raise PermanentError(f"encoding exceeded the {ENCODE_TIMEOUT_SECONDS}s timeout")
            returncode = process.wait()
        finally:  # cancel, timeout, soft time limit, warm shutdown: nothing of FFmpeg outlives this
            _kill_group(process)
            reader.join(timeout=5)
            if process.stdout is not None:  # our end of the progress pipe, read to its end by now
                process.stdout.close()
        tail = _tail(_read_bounded(stderr, tail=True), *hide_dirs)
    if returncode < 0:  # killed by a signal we did not send (OOM killer, shutdown): worth retrying
        raise TransientError(f"ffmpeg was killed by signal {-returncode}")
    if returncode != 0:
        raise PermanentError(f"ffmpeg failed (exit {returncode}): {tail}")
    return tail


def _next_line(lines: queue.Queue[str | None]) -> str | None:
    """The next progress line, or "" after a short wait so the caller can check cancel and the clock."""
    try:
        return lines.get(timeout=CANCEL_POLL_INTERVAL_SECONDS)
    except queue.Empty:
        return ""


@job_definition(
    "encode.video",
    1,
    params_model=EncodeVideoParams,
    max_attempts=2,
    timeout_seconds=ENCODE_TIMEOUT_SECONDS,
    concurrency_limit=3,  # each encode saturates several cores
    authorize=check_upload,
    description="Transcodes an uploaded video to 720p/1080p/4k MP4 (H.264/AAC) or WebM (VP9/Opus).",
)
def encode_video(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Transcode one upload and describe the file produced, as measured from the file itself."""
    storage_dir = Path(current_app.config["GPUJOBS_STORAGE_DIR"])
    source = input_path(storage_dir, ctx.tenant, params["inputFile"])
    info = probe(source)
    width, height = target_size(info.width, info.height, params["resolution"])
    target = output_path(storage_dir, ctx.job_id, params["format"])
    target.parent.mkdir(parents=True, exist_ok=True)
    # This attempt's own file, renamed into place only once complete and only by the job's holder.
    partial = target.with_name(f"{ctx.job_id}.{ctx.attempt}.part.{params['format']}")

    ctx.progress(0, "encoding started", width=width, height=height, durationSeconds=info.duration_seconds)
    streams = ["-map", "0:v:0", "-map", "0:a:0?", "-pix_fmt", "yuv420p"]  # first video, first audio if any
    scale = ["-vf", f"scale={width}:{height}:flags=lanczos,setsar=1"]
    args = ["-y", *input_args(source), *streams, *scale, *_codec_args(params["format"], params["quality"])]
    try:
        hide_dirs = (storage_dir, storage_dir.resolve())
        tail = run_ffmpeg(ctx, [*args, str(partial)], info.duration_seconds, hide_dirs)
        encoded = probe(partial)
        # ffmpeg skips undecodable data and exits 0: a truncated upload shows up as a short output
        if (
            info.duration_seconds
            and (encoded.duration_seconds or 0) < MIN_OUTPUT_DURATION_RATIO * info.duration_seconds
        ):
            decoded = f"{encoded.duration_seconds or 0:.1f}s of {info.duration_seconds:.1f}s"
            raise PermanentError(f"{source.name} is truncated or corrupt: only {decoded} decoded: {tail}")
        with ctx.hold_job() as held:  # no other attempt can take the job over until the rename is done
            if not held:
                raise JobCancelled(f"job {ctx.job_id}: attempt {ctx.attempt} lost the job; output not kept")
            os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    ctx.progress(100, "encoded")
    return {
        "outputFile": target.name,
        "outputPath": f"{OUTPUTS_DIR_NAME}/{target.name}",
        "format": params["format"],
        "resolution": params["resolution"],
        "quality": params["quality"],
        "width": encoded.width,
        "height": encoded.height,
        "durationSeconds": encoded.duration_seconds,
        "sizeBytes": target.stat().st_size,
    }

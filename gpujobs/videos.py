"""Video files on disk: accepting an upload for ``encode.video@1``, finding its output, and cleanup.

An upload is streamed to ``<storage>/uploads/<random>.<ext>`` and kept only if its extension is allowed
and its first bytes are the container that extension promises, so a renamed image is refused at the door.
FFmpeg never runs here (untrusted media is read only in a worker): a file it cannot read fails its job
with FFmpeg's reason. The
encoded file's name is derived from the job id (``gpujobs.definitions.video.output_path``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from flask import current_app
from sqlalchemy import select

from gpujobs import jobs
from gpujobs.definitions import video
from gpujobs.exceptions import GpuJobsError
from gpujobs.extensions import db
from gpujobs.models import Job, Schedule
from gpujobs.states import JobStatus

log = logging.getLogger(__name__)

DEFINITION_KEY, DEFINITION_VERSION = "encode.video", 1
COPY_CHUNK_BYTES = 1024 * 1024
MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
CLEANUP_QUERY_CHUNK = 500
# A job in these states never reads its files again (failed ones can be redriven: kept).
DONE_WITH_FILES = (JobStatus.SUCCEEDED, JobStatus.CANCELLED)


class UploadRejected(GpuJobsError):
    """An upload the service will not encode."""


class UnsupportedVideo(UploadRejected):
    """Not an accepted container: wrong extension, or content that does not match it."""


class VideoTooLarge(UploadRejected):
    """Larger than ``GPUJOBS_VIDEO_MAX_BYTES``."""


def extension_of(filename: str) -> str:
    """The lower-cased extension of a client's file name, checked against the accepted ones."""
    extension = filename.rpartition(".")[2].lower() if "." in filename else ""
    if extension not in video.ALLOWED_UPLOAD_EXTENSIONS:
        accepted = ", ".join(sorted(video.ALLOWED_UPLOAD_EXTENSIONS))
        raise UnsupportedVideo(f"{filename!r} is not a video file this service accepts ({accepted})")
    return extension


def store_upload(
    stream: IO[bytes], filename: str, storage_dir: str | Path, max_bytes: int, tenant_id: str
) -> str:
    """Save an upload under a random name in the tenant's uploads directory and return that name.

    Raises UnsupportedVideo or VideoTooLarge; nothing is left on disk then.
    """
    extension = extension_of(filename)
    directory = video.upload_dir(storage_dir, tenant_id)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{secrets.token_hex(16)}.{extension}"  # a bare name encode.video accepts as inputFile
    path = directory / name
    try:
        with open(path, "xb") as out:
            size = 0
            while chunk := stream.read(COPY_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise VideoTooLarge(f"the video is larger than {max_bytes} bytes")
                out.write(chunk)
        with open(path, "rb") as saved:
            head = saved.read(video.SNIFF_BYTES)
        expected = video.CONTAINER_BY_EXTENSION.get(extension)
        if expected is None or video.container_of(head) != expected:
            raise UnsupportedVideo(f"the content of {filename!r} is not a .{extension} video")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return name


def discard_upload(storage_dir: str | Path, tenant_id: str, name: str) -> None:
    """Remove an upload no job will read (its submission failed)."""
    (video.upload_dir(storage_dir, tenant_id) / name).unlink(missing_ok=True)


def finished_output(job: Job, storage_dir: str | Path) -> Path | None:
    """The encoded file of a succeeded encode.video job, or None until it exists (or after cleanup)."""
    if job.status != JobStatus.SUCCEEDED:
        return None
    path = video.output_path(storage_dir, str(job.id), job.params["format"]).resolve()
    return path if path.is_file() else None  # absolute: send_file reads relative paths from the package


def clean_up_videos(now: datetime | None = None) -> int:
    """Delete the uploads of ended jobs, and files older than the retention period.

    An upload goes at the first sweep after its job succeeded or was cancelled. A failed job's upload
    stays while the job is dead-lettered (a redrive reads it again) and ages out once the dead letter's
    retention removed the job; so does an upload no job refers to (its submission never happened).
    Outputs follow their job, which the jobs cleanup deletes at that age.
    """
    storage = Path(current_app.config["GPUJOBS_STORAGE_DIR"])
    retention = timedelta(hours=current_app.config["GPUJOBS_RETENTION_HOURS"])
    cutoff = ((now or jobs.utcnow()) - retention).timestamp()
    uploads = {
        path: modified
        for directory in _subdirectories(storage / video.UPLOADS_DIR_NAME)  # one per tenant
        for path, modified in _files(directory).items()
    }
    in_use, ended = _upload_readers([path.name for path in uploads])
    removed = [
        path
        for path, modified in uploads.items()
        if path.name not in in_use and (path.name in ended or modified < cutoff)
    ]
    removed += [
        path for path, modified in _files(storage / video.OUTPUTS_DIR_NAME).items() if modified < cutoff
    ]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("video cleanup: %d files removed", len(removed))
    return len(removed)


def _subdirectories(directory: Path) -> list[Path]:
    """The directories in ``directory`` (none when it does not exist yet)."""
    try:
        return [Path(entry.path) for entry in os.scandir(directory) if entry.is_dir()]
    except FileNotFoundError:
        return []


def _files(directory: Path) -> dict[Path, float]:
    """The files in ``directory`` with when each was last written (none when it does not exist yet)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    files = {}
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another cleanup run
            if entry.is_file():
                files[Path(entry.path)] = entry.stat().st_mtime
    return files


def _upload_readers(names: list[str]) -> tuple[set[str], set[str]]:
    """Of ``names``: those a job which may still run refers to, and those only ended jobs refer to."""
    input_file = Job.params["inputFile"].astext
    in_use: set[str] = set()
    referenced: set[str] = set()
    for start in range(0, len(names), CLEANUP_QUERY_CHUNK):
        rows = db.session.execute(
            select(input_file, Job.status.in_(DONE_WITH_FILES)).where(
                Job.definition_key == DEFINITION_KEY,
                input_file.in_(names[start : start + CLEANUP_QUERY_CHUNK]),
            )
        )
        for name, done in rows:
            referenced.add(name)
            if not done:
                in_use.add(name)
    return in_use, referenced - in_use


def move_flat_uploads() -> dict[str, list[str]]:
    """Move each upload stored flat in ``uploads/`` (before per-tenant directories) into its owner's.

    The owner is the one tenant whose encode.video jobs or schedules name the file as ``inputFile``.
    A file no job or schedule names, or that several tenants name, has no known owner and stays where
    it is (its jobs could not read it anyway); so does one whose destination already exists. Safe to run
    again: a moved file is no longer flat. Returns the file names by outcome: ``moved`` (as
    ``name -> tenant id``), ``unowned``, ``ambiguous``, ``exists``.
    """
    storage = Path(current_app.config["GPUJOBS_STORAGE_DIR"])
    flat = sorted(
        path.name
        for path in _files(storage / video.UPLOADS_DIR_NAME)
        if not path.is_symlink() and re.fullmatch(video.INPUT_FILE_PATTERN, path.name)
    )
    owners = _upload_owners(flat)
    outcome: dict[str, list[str]] = {"moved": [], "unowned": [], "ambiguous": [], "exists": []}
    for name in flat:
        tenants = owners.get(name, set())
        if len(tenants) != 1:
            outcome["ambiguous" if tenants else "unowned"].append(name)
            continue
        [tenant_id] = tenants
        target = video.upload_dir(storage, str(tenant_id)) / name
        if target.exists():
            outcome["exists"].append(name)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(storage / video.UPLOADS_DIR_NAME / name, target)  # one volume: atomic, mtime kept
        outcome["moved"].append(f"{name} -> {tenant_id}")
    log.info("flat uploads: %s", ", ".join(f"{len(names)} {what}" for what, names in outcome.items()))
    return outcome


def _upload_owners(names: list[str]) -> dict[str, set[uuid.UUID]]:
    """The tenants whose encode.video jobs or schedules name each of ``names`` as their input."""
    owners: dict[str, set[uuid.UUID]] = {}
    for model in (Job, Schedule):
        input_file = model.params["inputFile"].astext
        for start in range(0, len(names), CLEANUP_QUERY_CHUNK):
            rows = db.session.execute(
                select(input_file, model.tenant_id)
                .where(
                    model.definition_key == DEFINITION_KEY,
                    input_file.in_(names[start : start + CLEANUP_QUERY_CHUNK]),
                )
                .distinct()
            )
            for name, tenant_id in rows:
                owners.setdefault(name, set()).add(tenant_id)
    return owners

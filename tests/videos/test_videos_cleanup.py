"""Video cleanup: an ended job's upload goes at once, other files past retention unless a job that may
still run needs them (injected clock)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, update

from gpujobs import operations
from gpujobs.definitions import video
from gpujobs.extensions import db
from gpujobs.models import Job
from gpujobs.videos import clean_up_videos

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
OLD, RECENT = NOW - timedelta(hours=30), NOW - timedelta(hours=1)


def put(path: Path, modified: datetime) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"video")
    os.utime(path, (modified.timestamp(), modified.timestamp()))
    return path


def encode_job(tenant: dict, input_file: str, status: str) -> uuid.UUID:
    job = operations.submit(uuid.UUID(tenant["id"]), "encode.video", 1, {"inputFile": input_file})
    db.session.execute(update(Job).where(Job.id == job.id).values(status=status))
    db.session.commit()
    return job.id


def test_old_uploads_and_outputs_go_unless_a_job_may_still_read_them(
    app, app_context, tenant, tmp_path, monkeypatch
):
    monkeypatch.setitem(app.config, "GPUJOBS_STORAGE_DIR", str(tmp_path))
    monkeypatch.setitem(app.config, "GPUJOBS_RETENTION_HOURS", 24)
    uploads, outputs = video.upload_dir(tmp_path, tenant["id"]), tmp_path / video.OUTPUTS_DIR_NAME
    for name, status in [("waiting", "queued"), ("retrying", "retrying"), ("failed", "failed")]:
        encode_job(tenant, put(uploads / f"{name}.mp4", OLD).name, status)  # may still be (re)run
    for name, status in [("done", "succeeded"), ("stopped", "cancelled")]:
        encode_job(tenant, put(uploads / f"{name}.mp4", OLD).name, status)  # never read again
    put(uploads / "orphan.mp4", OLD)  # its submission never happened
    put(uploads / "recent.mp4", RECENT)
    old_output, new_output = uuid.uuid4(), uuid.uuid4()
    put(outputs / f"{old_output}.mp4", OLD)
    put(outputs / f"{new_output}.webm", RECENT)
    put(outputs / "stray.txt", OLD)

    assert clean_up_videos(now=NOW) == 5
    assert sorted(path.name for path in uploads.iterdir()) == [
        "failed.mp4",
        "recent.mp4",
        "retrying.mp4",
        "waiting.mp4",
    ]
    assert [path.name for path in outputs.iterdir()] == [f"{new_output}.webm"]
    assert clean_up_videos(now=NOW) == 0


def test_an_upload_goes_as_soon_as_its_job_ended_and_a_dead_letters_stays_until_its_job_is_deleted(
    app, app_context, tenant, tmp_path, monkeypatch
):
    monkeypatch.setitem(app.config, "GPUJOBS_STORAGE_DIR", str(tmp_path))
    uploads = video.upload_dir(tmp_path, tenant["id"])
    for name, status in [("done", "succeeded"), ("stopped", "cancelled"), ("running", "running")]:
        encode_job(tenant, put(uploads / f"{name}.mp4", RECENT).name, status)
    dead = encode_job(tenant, put(uploads / "dead.mp4", OLD).name, "failed")
    db.session.execute(update(Job).where(Job.id == dead).values(dead_lettered=True))
    db.session.commit()

    assert clean_up_videos(now=NOW) == 2
    assert sorted(path.name for path in uploads.iterdir()) == ["dead.mp4", "running.mp4"]
    db.session.execute(delete(Job).where(Job.id == dead))  # what the dead-letter retention does
    db.session.commit()
    assert clean_up_videos(now=NOW) == 1
    assert [path.name for path in uploads.iterdir()] == ["running.mp4"]


def test_cleanup_with_no_storage_directory_yet_does_nothing(app, app_context, tmp_path, monkeypatch):
    monkeypatch.setitem(app.config, "GPUJOBS_STORAGE_DIR", str(tmp_path / "never-created"))
    assert clean_up_videos(now=NOW) == 0


def test_flat_uploads_move_into_their_owners_directory_and_unknown_ones_stay(
    app, app_context, tenant, tmp_path, monkeypatch
):
    """Uploads stored flat in uploads/ before per-tenant directories: a job or schedule names the owner."""
    from support.tenants import make_tenant

    from gpujobs import schedules
    from gpujobs.videos import move_flat_uploads

    monkeypatch.setitem(app.config, "GPUJOBS_STORAGE_DIR", str(tmp_path))
    other = make_tenant(app, "other")
    flat = tmp_path / video.UPLOADS_DIR_NAME

    def named_by(owner: dict, name: str, schedule: bool = False) -> None:
        """``owner`` refers to ``name``, which it uploaded before uploads had a directory per tenant."""
        mine = put(video.upload_dir(tmp_path, owner["id"]) / name, RECENT)
        if schedule:
            schedules.create(
                uuid.UUID(owner["id"]), name=name, cron="0 3 * * *", definition_key="encode.video",
                definition_version=1, params={"inputFile": name},
            )  # fmt: skip
        else:
            encode_job(owner, name, "queued")
        if not (flat / name).exists():
            mine.rename(flat / name)
        else:
            mine.unlink()

    named_by(tenant, "mine.mp4")
    named_by(other, "theirs.webm", schedule=True)
    named_by(tenant, "both.mp4")
    named_by(other, "both.mp4")
    named_by(tenant, "taken.mp4")
    put(video.upload_dir(tmp_path, tenant["id"]) / "taken.mp4", RECENT)  # a newer file of that name
    put(flat / "nobody.mp4", OLD)
    put(flat / "notes.txt", OLD)  # not an upload name: not ours to touch

    outcome = move_flat_uploads()
    assert outcome == {
        "moved": [f"mine.mp4 -> {tenant['id']}", f"theirs.webm -> {other['id']}"],
        "unowned": ["nobody.mp4"],
        "ambiguous": ["both.mp4"],
        "exists": ["taken.mp4"],
    }
    assert (video.upload_dir(tmp_path, tenant["id"]) / "mine.mp4").is_file()
    assert (video.upload_dir(tmp_path, other["id"]) / "theirs.webm").is_file()
    assert sorted(path.name for path in flat.iterdir() if path.is_file()) == [
        "both.mp4", "nobody.mp4", "notes.txt", "taken.mp4",
    ]  # fmt: skip
    assert move_flat_uploads()["moved"] == []  # run again: nothing left to move

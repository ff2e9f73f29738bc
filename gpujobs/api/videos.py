"""``/v1/videos``: upload a video for ``encode.video@1``, follow its job, download the encoded file.

The seed API's form named the resolution ``quality`` (``quality=1080p``); encode.video keeps
``resolution`` (720p|1080p|4k) and ``quality`` (low|medium|high) apart. Both forms are accepted: a
``quality`` that names a resolution is read as ``resolution``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, cast

from flask import Blueprint, Response, current_app, g, request, send_file, url_for
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpujobs import operations, resources, videos
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.errors import ApiError
from gpujobs.api.jobs import tenant_job
from gpujobs.api.openapi import operation
from gpujobs.definitions.video import RESOLUTION_BOXES, OutputFormat, Quality, Resolution
from gpujobs.exceptions import InvalidField, NotFound
from gpujobs.models import Job

bp = Blueprint("videos", __name__, url_prefix="/v1/videos")

TAG = "videos"
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small fields around the file
MAX_FORM_PARTS = 16


class EncodeForm(BaseModel):
    """The form fields of ``POST /v1/videos/encode`` besides the file."""

    model_config = ConfigDict(extra="forbid")

    format: OutputFormat | None = Field(None, description="mp4 (H.264/AAC, the default) or webm (VP9/Opus)")
    resolution: Resolution | None = Field(None, description="the box the frame fits in; default 720p")
    quality: Quality | Resolution | None = Field(
        None,
        description="low, medium (the default) or high; 720p, 1080p or 4k (the seed's form) sets resolution",
    )
    priority: resources.PriorityName | Annotated[int, Field(ge=0, le=10)] | None = Field(
        None, description="a name, or 0-10 (higher is more urgent); default normal"
    )

    @model_validator(mode="after")
    def _seed_quality(self) -> EncodeForm:
        """The seed's form: ``quality=1080p`` names the resolution, and quality keeps its default."""
        if self.quality in RESOLUTION_BOXES:
            if self.resolution not in (None, self.quality):
                raise ValueError(f"quality={self.quality} is a resolution and contradicts resolution")
            self.resolution, self.quality = cast(Resolution, self.quality), None
        return self

    def job_params(self, input_file: str) -> dict[str, Any]:
        """encode.video params; fields left out take the definition's defaults."""
        chosen = {"format": self.format, "resolution": self.resolution, "quality": self.quality}
        return {"inputFile": input_file, **{key: value for key, value in chosen.items() if value is not None}}


class EncodeUpload(EncodeForm):
    """The whole multipart form, as documented."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"format": "mp4", "resolution": "1080p", "quality": "high"}]}
    )

    video: bytes = Field(description="the video file: mp4, mov, mkv, webm or avi")


class VideoAccepted(schemas.Out):
    """The upload is stored and its encode.video job queued; follow ``statusUrl``."""

    jobId: uuid.UUID
    status: resources.JobStatus
    message: str
    statusUrl: str
    inputFile: str
    format: OutputFormat
    resolution: Resolution
    quality: Quality


class VideoStatus(schemas.Out):
    """A video job's state; the output fields are null until the encoded file can be downloaded."""

    jobId: uuid.UUID
    status: resources.JobStatus
    definitionKey: str
    progress: float | None
    error: str | None
    format: OutputFormat
    resolution: Resolution
    quality: Quality
    jobUrl: str
    outputFilename: str | None
    outputPath: str | None
    sizeBytes: int | None
    width: int | None
    height: int | None
    durationSeconds: float | None
    downloadUrl: str | None


def video_job(job_id: uuid.UUID) -> Job:
    """The caller's encode.video job; NotFound also for another tenant's, or another kind of job."""
    job = tenant_job(job_id)
    if job.definition_key != videos.DEFINITION_KEY:
        raise NotFound(f"no video job {job_id}")
    return job


def _choices(job: Job) -> dict[str, str]:
    return {key: job.params[key] for key in ("format", "resolution", "quality")}


@bp.post("/encode")
@operation(
    summary="Upload a video and queue its encoding",
    tag=TAG,
    request=EncodeUpload,
    content_type="multipart/form-data",
    responses={
        202: VideoAccepted,
        413: "Larger than GPUJOBS_VIDEO_MAX_BYTES",
        415: "Not an mp4, mov, mkv, webm or avi video (checked by name and by content)",
        422: "Invalid field; errors[] names the field",
    },
)
@require_api_key
def encode_video() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store the upload and queue its encode.video job: 202 once both are durable."""
    max_bytes = current_app.config["GPUJOBS_VIDEO_MAX_BYTES"]
    request.max_content_length = max_bytes + FORM_OVERHEAD_BYTES  # this route only: the app's stays small
    request.max_form_parts = MAX_FORM_PARTS
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "Unsupported Media Type", "send multipart/form-data with the file in field video")
    upload = request.files.get("video")
    if upload is None or not upload.filename:
        raise InvalidField("video", "must be a file")
    form = EncodeForm.model_validate(request.form.to_dict())
    storage = current_app.config["GPUJOBS_STORAGE_DIR"]
    tenant_id = str(g.tenant.id)
    input_file = videos.store_upload(upload.stream, upload.filename, storage, max_bytes, tenant_id)
    try:
        job = operations.submit(
            g.tenant.id,
            videos.DEFINITION_KEY,
            videos.DEFINITION_VERSION,
            form.job_params(input_file),
            operations.JobOptions(priority=form.priority),
        )
    except BaseException:  # nothing will read the upload now (the database is away, say): remove it
        videos.discard_upload(storage, tenant_id, input_file)
        raise
    status_url = url_for("videos.video_status", job_id=job.id)
    accepted = {
        "jobId": str(job.id),
        "status": job.status,
        "message": "Video encoding job created",
        "statusUrl": status_url,
        "inputFile": input_file,
    }
    return {**accepted, **_choices(job)}, 202, {"Location": status_url}


@bp.get("/<uuid:job_id>/status")
@operation(summary="Follow a video job", tag=TAG, responses={200: VideoStatus})
@require_api_key
def video_status(job_id: uuid.UUID) -> dict[str, Any]:
    """Status and progress; once the file is ready, its name, size, dimensions and download URL."""
    job = video_job(job_id)
    ready = videos.finished_output(job, current_app.config["GPUJOBS_STORAGE_DIR"]) is not None
    result = (job.result or {}) if ready else {}
    return {
        "jobId": str(job.id),
        "status": job.status,
        "definitionKey": job.definition_key,
        "progress": job.progress,
        "error": job.error,
        **_choices(job),
        "jobUrl": url_for("jobs.get_job", job_id=job.id),
        "outputFilename": result.get("outputFile"),
        "outputPath": result.get("outputPath"),
        "sizeBytes": result.get("sizeBytes"),
        "width": result.get("width"),
        "height": result.get("height"),
        "durationSeconds": result.get("durationSeconds"),
        "downloadUrl": url_for("videos.download_video", job_id=job.id) if ready else None,
    }


@bp.get("/<uuid:job_id>/download")
@operation(
    summary="Download an encoded video",
    tag=TAG,
    responses={200: "The encoded file (video/mp4 or video/webm); Range requests are served"},
)
@require_api_key
def download_video(job_id: uuid.UUID) -> Response:
    """Stream the encoded file; 404 until the job has produced it (and after cleanup removed it)."""
    job = video_job(job_id)
    output = videos.finished_output(job, current_app.config["GPUJOBS_STORAGE_DIR"])
    if output is None:
        raise NotFound(f"video job {job_id} has no encoded file (status: {job.status})")
    fmt = job.params["format"]
    name = f"{job.id}-{job.params['resolution']}.{fmt}"
    return send_file(output, mimetype=videos.MEDIA_TYPES[fmt], as_attachment=True, download_name=name)

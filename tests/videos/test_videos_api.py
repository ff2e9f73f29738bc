"""``/v1/videos``: a real clip uploaded, encoded by a real worker, downloaded; each refusal a problem."""

from __future__ import annotations

import io
import subprocess

import pytest
from support.polling import wait_for
from support.tenants import make_tenant, set_limits

from gpujobs.api.videos import VideoAccepted, VideoStatus
from gpujobs.definitions import video
from gpujobs.jobs import PRIORITY_LEVELS


def upload(client, tenant, content: bytes, filename: str = "holiday.mp4", **fields):
    data = {"video": (io.BytesIO(content), filename), **{name: str(value) for name, value in fields.items()}}
    return client.post(
        "/v1/videos/encode", data=data, headers=tenant["headers"], content_type="multipart/form-data"
    )


def job_params(client, tenant, response) -> dict:
    return client.get(f"/v1/jobs/{response.json['jobId']}", headers=tenant["headers"]).json["params"]


def test_a_real_clip_is_uploaded_encoded_by_a_worker_and_downloaded(client, tenant, clips, worker, tmp_path):
    accepted = upload(client, tenant, clips["mp4"].read_bytes(), quality="720p", priority=8)
    assert accepted.status_code == 202, accepted.json
    VideoAccepted.model_validate(accepted.json)
    status_url = accepted.json["statusUrl"]
    assert accepted.headers["Location"] == status_url == f"/v1/videos/{accepted.json['jobId']}/status"
    assert (accepted.json["status"], accepted.json["resolution"], accepted.json["quality"]) == (
        "queued",
        "720p",
        "medium",
    )

    def finished() -> dict | None:
        status = client.get(status_url, headers=tenant["headers"]).json
        return status if status["status"] in ("succeeded", "failed") else None

    status = wait_for(finished, timeout=120, interval=0.5)
    VideoStatus.model_validate(status)
    assert status["status"] == "succeeded", status["error"]
    assert status["progress"] == 100 and status["outputFilename"] == f"{status['jobId']}.mp4"
    assert (status["width"], status["height"]) == (960, 720)
    assert status["durationSeconds"] == pytest.approx(2.0, abs=0.1)

    download = client.get(status["downloadUrl"], headers=tenant["headers"])
    assert download.status_code == 200 and download.mimetype == "video/mp4"
    assert download.headers["Content-Disposition"] == f"attachment; filename={status['jobId']}-720p.mp4"
    assert len(download.data) == status["sizeBytes"]
    saved = tmp_path / "downloaded.mp4"
    saved.write_bytes(download.data)
    download.close()  # a file response holds the file open until it is closed
    described = subprocess.run(
        [video.ffmpeg_exe(), "-hide_banner", "-i", str(saved)], capture_output=True, text=True, check=False
    ).stderr
    assert "Video: h264" in described and "960x720" in described and "Audio: aac" in described
    ranged = client.get(status["downloadUrl"], headers={**tenant["headers"], "Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.data == download.data[:100]
    ranged.close()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"format": "mp4", "resolution": "720p", "quality": "medium"}),
        ({"quality": "1080p"}, {"format": "mp4", "resolution": "1080p", "quality": "medium"}),
        ({"quality": "4k", "resolution": "4k"}, {"format": "mp4", "resolution": "4k", "quality": "medium"}),
        (
            {"format": "webm", "resolution": "1080p", "quality": "high"},
            {"format": "webm", "resolution": "1080p", "quality": "high"},
        ),
    ],
)
def test_the_seed_quality_form_and_the_explicit_fields_both_choose_the_encode(
    client, tenant, clips, fields, expected
):
    response = upload(client, tenant, clips["mp4"].read_bytes(), **fields)
    assert response.status_code == 202, response.json
    params = job_params(client, tenant, response)
    assert {key: params[key] for key in expected} == expected
    assert (
        params["inputFile"] == response.json["inputFile"] != "holiday.mp4"
    )  # a random name, not the client's


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("10", (10, "critical")), ("high", ("high", "high")), ("0", (0, "low")), (None, ("normal", "normal"))],
)
def test_priority_is_a_name_or_a_number_from_0_to_10(app, client, tenant, clips, priority, expected):
    set_limits(app, tenant, max_priority=PRIORITY_LEVELS["critical"])
    fields = {} if priority is None else {"priority": priority}
    response = upload(client, tenant, clips["mp4"].read_bytes(), **fields)
    job = client.get(f"/v1/jobs/{response.json['jobId']}", headers=tenant["headers"]).json
    assert (job["priority"], job["priorityLevel"]) == expected


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quality": "1080p", "resolution": "720p"}, "body"),
        ({"format": "avi"}, "format"),
        ({"resolution": "8k"}, "resolution"),
        ({"quality": "best"}, "quality"),
        ({"priority": "11"}, "priority"),
        ({"priority": "urgent"}, "priority"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_form_fields_are_a_422_and_leave_no_file_behind(client, tenant, clips, uploads, fields, field):
    before = uploads()
    response = upload(client, tenant, clips["mp4"].read_bytes(), **fields)
    assert response.status_code == 422 and response.content_type == "application/problem+json"
    assert any(error["field"].split(".")[0] == field for error in response.json["errors"]), response.json
    assert uploads() == before


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.mark.parametrize(
    ("clip", "filename", "status"),
    [
        ("mp4", "holiday.txt", 415),  # an extension that is not a video
        ("mp4", "holiday", 415),
        (PNG, "holiday.mp4", 415),  # an image renamed
        ("mkv", "holiday.mp4", 415),  # a Matroska file calling itself MP4
        (b"", "empty.mp4", 415),
    ],
)
def test_files_that_are_not_videos_are_refused_by_name_and_by_content(
    client, tenant, clips, uploads, clip, filename, status
):
    before = uploads()
    content = clips[clip].read_bytes() if isinstance(clip, str) else clip
    response = upload(client, tenant, content, filename)
    assert response.status_code == status, response.json
    assert response.content_type == "application/problem+json"
    assert uploads() == before


def test_an_upload_ffmpeg_cannot_read_is_accepted_and_its_job_fails_in_the_worker_with_the_reason(
    client, tenant, clips, worker
):
    accepted = upload(client, tenant, clips["audio"].read_bytes(), "sound.mp4")  # no video stream
    assert accepted.status_code == 202, accepted.json  # the web process never runs FFmpeg

    def finished() -> dict | None:
        status = client.get(accepted.json["statusUrl"], headers=tenant["headers"]).json
        return status if status["status"] in ("succeeded", "failed") else None

    status = wait_for(finished, timeout=60, interval=0.5)
    assert status["status"] == "failed" and "has no readable video stream" in status["error"]


@pytest.mark.parametrize("container", ["mov", "mkv", "webm"])
def test_other_containers_are_accepted_whatever_the_case_of_their_extension(client, tenant, clips, container):
    response = upload(client, tenant, clips[container].read_bytes(), f"clip.{container.upper()}")
    assert response.status_code == 202, response.json
    assert response.json["inputFile"].endswith(f".{container}")


def test_the_video_size_limit_replaces_the_json_body_limit_on_this_route_only(
    client, tenant, clips, uploads, app, monkeypatch
):
    content = clips["mp4"].read_bytes()
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 1000)  # smaller than the clip
    assert upload(client, tenant, content).status_code == 202
    before = uploads()
    monkeypatch.setitem(app.config, "GPUJOBS_VIDEO_MAX_BYTES", len(content) - 1)
    too_large = upload(client, tenant, content)
    assert too_large.status_code == 413 and too_large.content_type == "application/problem+json"
    monkeypatch.setitem(app.config, "GPUJOBS_VIDEO_MAX_BYTES", 1000)
    far_too_large = upload(client, tenant, bytes(200_000))  # past the route's body limit: never parsed
    assert far_too_large.status_code == 413 and far_too_large.content_type == "application/problem+json"
    assert uploads() == before


def test_an_upload_without_a_file_or_as_json_is_refused(client, tenant):
    no_file = client.post(
        "/v1/videos/encode",
        data={"format": "mp4"},
        headers=tenant["headers"],
        content_type="multipart/form-data",
    )
    assert no_file.status_code == 422 and no_file.json["errors"][0]["field"] == "video"
    as_json = client.post("/v1/videos/encode", json={"video": "x"}, headers=tenant["headers"])
    assert as_json.status_code == 415 and as_json.content_type == "application/problem+json"


def test_the_download_is_404_until_the_encoded_file_exists(client, tenant, clips):
    accepted = upload(client, tenant, clips["mp4"].read_bytes()).json
    status = VideoStatus.model_validate(client.get(accepted["statusUrl"], headers=tenant["headers"]).json)
    assert status.status == "queued" and status.downloadUrl is None and status.outputFilename is None
    assert status.progress is None and status.sizeBytes is None
    missing = client.get(f"/v1/videos/{accepted['jobId']}/download", headers=tenant["headers"])
    assert missing.status_code == 404 and missing.content_type == "application/problem+json"


def test_video_routes_need_a_key_and_never_show_another_tenants_or_a_non_video_job(
    client, tenant, clips, app
):
    job_id = upload(client, tenant, clips["mp4"].read_bytes()).json["jobId"]
    other = make_tenant(app, "globex")
    echo = client.post("/v1/jobs", json={"definitionKey": "echo"}, headers=tenant["headers"]).json["id"]
    for path in ("status", "download"):
        assert client.get(f"/v1/videos/{job_id}/{path}", headers=other["headers"]).status_code == 404
        assert client.get(f"/v1/videos/{echo}/{path}", headers=tenant["headers"]).status_code == 404
        assert client.get(f"/v1/videos/not-a-job/{path}", headers=tenant["headers"]).status_code == 404
        assert client.get(f"/v1/videos/{job_id}/{path}").status_code == 401
    unauthenticated = client.post("/v1/videos/encode", data={"video": (io.BytesIO(b"x"), "a.mp4")})
    assert unauthenticated.status_code == 401 and unauthenticated.content_type == "application/problem+json"


def test_an_upload_belongs_to_its_tenant_another_naming_it_gets_the_answer_for_a_missing_file(
    client, tenant, clips, app
):
    input_file = upload(client, tenant, clips["mp4"].read_bytes()).json["inputFile"]
    other = make_tenant(app, "initech")

    def encode(who: dict, name: str, route: str = "/v1/jobs"):
        params = {"inputFile": name}
        body = {"definitionKey": "encode.video", "params": params}
        if route == "/v1/schedules":
            body |= {"name": f"nightly-{name}", "cron": "0 3 * * *"}
        return client.post(route, json=body, headers=who["headers"])

    assert encode(tenant, input_file).status_code == 202  # the owner may encode it again
    for route in ("/v1/jobs", "/v1/schedules"):
        theirs, missing = encode(other, input_file, route), encode(other, "0" * 32 + ".mp4", route)
        assert theirs.status_code == missing.status_code == 422
        assert theirs.json["errors"][0]["field"] == missing.json["errors"][0]["field"] == "params.inputFile"
        assert theirs.json["errors"][0]["message"].replace(input_file, "NAME") == missing.json["errors"][0][
            "message"
        ].replace("0" * 32 + ".mp4", "NAME")
    assert encode(tenant, input_file, "/v1/schedules").status_code == 201

"""Our Standard Webhooks signatures, checked with the public ``standardwebhooks`` receiver library."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gpujobs.signing import generate_secret, sign, signature_header, webhook_headers

BODY = json.dumps({"type": "job.succeeded", "job": {"id": "job_1", "status": "succeeded"}}).encode()
MSG_ID = "evt_2f9c1d"
STALE_SECONDS = 6 * 60  # the reference library tolerates 5 minutes either way


def test_a_generated_secret_is_whsec_with_32_random_bytes_and_never_repeats() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert len({generate_secret() for _ in range(50)}) == 50


def test_the_library_accepts_a_delivery_signed_with_one_secret() -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], MSG_ID, int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_the_headers_are_the_standard_four() -> None:
    now = int(time.time())
    headers = webhook_headers([generate_secret()], MSG_ID, now, BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"}
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")


def test_sign_matches_the_reference_library_signature_byte_for_byte() -> None:
    secret = generate_secret()
    now = int(time.time())
    expected = Webhook(secret).sign(MSG_ID, datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    assert sign(secret, MSG_ID, now, BODY) == expected


def test_during_rotation_both_the_old_and_the_new_secret_verify() -> None:
    old_secret, new_secret = generate_secret(), generate_secret()
    headers = webhook_headers([old_secret, new_secret], MSG_ID, int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old_secret).verify(BODY, headers)
    Webhook(new_secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_a_tampered_body_is_refused_by_the_library() -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], MSG_ID, int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"succeeded", b"failed"), headers)


def test_a_tampered_timestamp_is_refused_by_the_library() -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = webhook_headers([secret], MSG_ID, now, BODY)
    headers["webhook-timestamp"] = str(now - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_a_tampered_message_id_is_refused_by_the_library() -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], MSG_ID, int(time.time()), BODY)
    headers["webhook-id"] = "evt_other"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


@pytest.mark.parametrize("offset_seconds", [-STALE_SECONDS, STALE_SECONDS])
def test_a_correctly_signed_but_stale_or_future_timestamp_is_refused(offset_seconds: int) -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], MSG_ID, int(time.time()) + offset_seconds, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_signature_header_has_one_signature_per_secret_in_order() -> None:
    secrets = [generate_secret() for _ in range(3)]
    header = signature_header(secrets, MSG_ID, 1_700_000_000, BODY)
    assert header.split(" ") == [sign(s, MSG_ID, 1_700_000_000, BODY) for s in secrets]


@pytest.mark.parametrize("bad_secret", ["not-prefixed", "whsec_", "whsec_!!!not base64!!!"])
def test_malformed_secrets_are_refused_loudly(bad_secret: str) -> None:
    with pytest.raises(ValueError):
        sign(bad_secret, MSG_ID, 1_700_000_000, BODY)


def test_signing_needs_at_least_one_secret_and_the_exact_body_bytes() -> None:
    with pytest.raises(ValueError):
        signature_header([], MSG_ID, 1_700_000_000, BODY)
    with pytest.raises(TypeError):
        sign(generate_secret(), MSG_ID, 1_700_000_000, BODY.decode())  # type: ignore[arg-type]

"""Rate limit per API key: quota headers, 429 and Retry-After, keys counted apart, open without Redis."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from gpujobs import create_app
from gpujobs.api.ratelimit import WINDOW_SECONDS


@pytest.fixture
def limit_of_three(app, monkeypatch) -> int:
    """A limit of 3 per minute, starting well inside a window so that the test never straddles two."""
    monkeypatch.setitem(app.config, "GPUJOBS_RATE_LIMIT_PER_MINUTE", 3)
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < 5:
        time.sleep(left)
    return 3


def test_each_answer_carries_the_quota_and_the_request_over_it_is_429_with_retry_after(
    client, tenant, limit_of_three
):
    remaining = [
        client.get("/v1/jobs", headers=tenant["headers"]).headers["RateLimit-Remaining"] for _ in range(3)
    ]
    assert remaining == ["2", "1", "0"]
    refused = client.get("/v1/jobs", headers=tenant["headers"])
    assert refused.status_code == 429 and refused.content_type == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == "3" and refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) == int(refused.headers["Retry-After"])


def test_each_api_key_has_its_own_quota(client, tenant, other, limit_of_three):
    for _ in range(4):
        client.get("/v1/jobs", headers=tenant["headers"])
    assert client.get("/v1/jobs", headers=tenant["headers"]).status_code == 429
    assert client.get("/v1/jobs", headers=other["headers"]).status_code == 200


def test_requests_without_a_valid_key_are_not_counted_and_keys_never_reach_redis(app, client, tenant):
    for _ in range(3):
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.get("/v1/jobs", headers=tenant["headers"])
    names = [
        name.decode() for name in redis.Redis.from_url(app.config["REDIS_URL"]).keys("gpujobs:ratelimit:*")
    ]
    assert len(names) == 1 and tenant["key"] not in names[0]


def test_with_redis_unreachable_requests_go_through_unlimited(app, tenant):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = create_app({"TESTING": True, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    down.config["GPUJOBS_RATE_LIMIT_PER_MINUTE"] = 1
    client = down.test_client()
    answers = [client.get("/v1/jobs", headers=tenant["headers"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert "RateLimit-Limit" not in answers[0].headers

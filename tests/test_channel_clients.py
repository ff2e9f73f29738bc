"""gpujobs.channel_clients: one Redis client per kombu channel, rebuilt only with the channel's pool."""

from __future__ import annotations

import pytest
import redis
from flask import Flask


def test_a_channel_reuses_one_client_until_its_pool_changes(app: Flask) -> None:
    celery = app.extensions["celery"]
    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool

        # kombu drops its pools when the connection is lost: the next operation needs a client of the new one.
        channel._disconnect_pools()
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool
        assert second.ping()

        # The event loop's client is kombu's own, built apart from the reused one.
        assert channel._create_client(asynchronous=True) is not second


def test_publishing_builds_no_client_per_message(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    celery = app.extensions["celery"]
    queue = "gpujobs-test-channel-clients"
    built: list[redis.Redis] = []
    original_init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]

    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        channel.client.delete(queue)
        monkeypatch.setattr(redis.Redis, "__init__", counting_init)
        producer = connection.Producer()
        for number in range(5):
            producer.publish({"n": number}, routing_key=queue, exchange="", declare=[])
        monkeypatch.undo()
        assert channel.client.llen(queue) == 5
        assert len(built) <= 1  # kombu alone builds one for each of the five
        channel.client.delete(queue)


def test_a_closed_channel_still_refuses_to_build_a_client(app: Flask) -> None:
    celery = app.extensions["celery"]
    connection = celery.connection_for_write()
    channel = connection.default_channel
    channel._create_client()
    connection.collect()  # what Celery does to a lost connection: the transport is detached
    channel._disconnect_pools()
    with pytest.raises(redis.ConnectionError):
        channel._create_client()

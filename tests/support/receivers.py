"""A webhook receiver on 127.0.0.1 that checks signatures with the public ``standardwebhooks`` library."""

from __future__ import annotations

from typing import Any

from standardwebhooks.webhooks import Webhook

from bench.receiver import LoopbackReceiver


class Receiver:
    """Verifies every delivery with the tenant's secret, and can fail the first ones on purpose."""

    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.verified: list[Any] = []
        self.ids: list[str] = []
        self.headers: list[dict[str, str]] = []  # of each verified delivery, names lower-cased
        self.remaining_failures = fail_first
        self._webhook = Webhook(secret)
        self._receiver = LoopbackReceiver(self._on_post)
        self.url = self._receiver.url

    def _on_post(self, headers: dict[str, str], body: bytes) -> int:
        self.ids.append(headers["webhook-id"])
        if self.remaining_failures > 0:
            self.remaining_failures -= 1
            return 503
        self.verified.append(self._webhook.verify(body, headers))
        self.headers.append({name.lower(): value for name, value in headers.items()})
        return 204

    def close(self) -> None:
        """Stop listening."""
        self._receiver.close()

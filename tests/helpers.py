"""Small helpers the tests share (imported as ``helpers``; conftest puts this folder on the path)."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask


def make_tenant(app: Flask, name: str) -> dict[str, str]:
    """Create a tenant and an API key for it."""
    from gpujobs.extensions import db
    from gpujobs.tenants import create_api_key, ensure_tenant

    with app.app_context():
        key = create_api_key(name)
        tenant_id = str(ensure_tenant(name).id)
        db.session.remove()
    return {"id": tenant_id, "name": name, "key": key, "headers": {"Authorization": f"Bearer {key}"}}


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1) -> object:
    """Poll until ``predicate`` returns something truthy; fail the test with a clear message if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")

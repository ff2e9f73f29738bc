"""Waiting for something another process does: `wait_for` is in gpujobs/dev, shared with the benchmarks."""

from __future__ import annotations

from gpujobs.dev.polling import wait_for

__all__ = ["wait_for"]

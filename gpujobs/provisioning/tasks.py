"""Celery tasks of the provisioning chain (monitor, reconcile): thin entry points over the domain code."""

from __future__ import annotations

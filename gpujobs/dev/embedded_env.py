"""The small file through which `make run` tells other processes where its embedded servers are.

``gpujobs dev`` writes ``<data dir>/embedded.env`` (``DATABASE_URL=...``, ``REDIS_URL=...`` and its
``GPUJOBS_ENCRYPTION_KEY``) once its servers are up and removes it when they stop; configuration reads
it for unset variables only.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_ENV_FILE = "embedded.env"


def read_embedded_env(data_dir: Path) -> dict[str, str]:
    """Variables recorded by a running ``gpujobs dev``; empty when none is running."""
    path = data_dir / EMBEDDED_ENV_FILE
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def write_embedded_env(data_dir: Path, values: dict[str, str]) -> Path:
    """Record where the embedded servers listen (readable by the owner only: it holds a key)."""
    path = data_dir / EMBEDDED_ENV_FILE
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    path.chmod(0o600)
    return path

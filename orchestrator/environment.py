"""Every environment variable minutereel's front ends read, in one place (nothing deeper reads os.environ).

    RAY_ADDRESS             the Ray cluster to attach to (unset or empty: start a local one)
    MINUTEREEL_CACHE        where checkpoints are cached (default: pipeline.checkpoints.default_cache_dir)
    MINUTEREEL_JOBS_ROOT    the server's jobs root (default: ./minutereel-jobs)
    MINUTEREEL_API_TOKEN    the bearer token the HTTP API asks for (unset: none)
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "MINUTEREEL_API_TOKEN"


def ray_address() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None


def cache_dir() -> Path | None:
    cache = os.environ.get("MINUTEREEL_CACHE")
    return Path(cache) if cache else None


def jobs_root() -> str:
    return os.environ.get("MINUTEREEL_JOBS_ROOT") or str(Path("minutereel-jobs").resolve())


def api_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None

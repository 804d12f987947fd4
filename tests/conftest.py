"""Shared fixtures: one Ray cluster per session (`ray start --head`) and one tiny checkpoint cache."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache directory holding freshly built tiny checkpoints."""
    from pipeline.tiny import ensure_tiny_checkpoints

    cache = tmp_path_factory.mktemp("minutereel-cache")
    ensure_tiny_checkpoints(cache)
    return cache


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster, started as users start one (`ray start --head`, two CPU slots
    like this machine, with the job server for `ray job submit`). Yields its address; the
    dashboard address is in RAY_JOB_ADDRESS for the duration.

    Token auth is off for this loopback-only cluster: a token left in ~/.ray by an earlier cluster
    would otherwise make `ray job submit` fail to authenticate. Teardown runs `ray stop`, which
    stops every Ray cluster this user runs on the machine.
    """
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    port, dashboard = _free_port(), _free_port()
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    address = f"127.0.0.1:{port}"
    os.environ["RAY_JOB_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    try:
        ray.init(address=address, logging_level=logging.WARNING)
        yield address
    finally:
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)

"""Shared fixtures: one Ray cluster per session (`ray start --head`) and one tiny checkpoint cache."""

from __future__ import annotations

import contextlib
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
    """A cache directory holding a fresh copy of the shipped tiny checkpoints."""
    from pipeline.tiny import ensure_tiny_checkpoints

    cache = tmp_path_factory.mktemp("minutereel-cache")
    ensure_tiny_checkpoints(cache)
    return cache


def _stop_cluster(temp_dir: Path, port: int) -> None:
    """Stop only the Ray processes of the cluster rooted at `temp_dir` with its GCS on `port` (`ray stop`
    would stop every cluster this user runs on the machine, other test sessions' included). The Ray client
    server's command line names no temp dir, only the GCS address it serves."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or ()
            client_server = "ray.util.client.server" in cmdline and any(
                arg.startswith("--address=") and arg.endswith(f":{port}") for arg in cmdline)
            if client_server or str(temp_dir) in " ".join(cmdline):
                procs.append(proc)
                proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=3)  # then SIGKILL: some linger the whole wait on SIGTERM
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The session's Ray cluster, started as users start one (`ray start --head`, two CPU slots
    like this machine, with the job server for `ray job submit`). Yields its address; the
    dashboard address is in RAY_JOB_ADDRESS for the duration.

    Token auth is off for this loopback-only cluster: a token left in ~/.ray by an earlier cluster
    would otherwise make `ray job submit` fail to authenticate.
    """
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Job entrypoints (`python -m ...`) resolve `python` on the cluster's PATH: make it this venv's,
    # as it is for a user who activated the venv before `ray start`.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    temp_dir = tmp_path_factory.mktemp("ray")
    port, dashboard = _free_port(), _free_port()
    # Fixed default ports (client server 10001, dashboard agent 52365, ...) would collide with
    # another test session's cluster on the same machine: take free ones.
    ports = [f"--{name}={_free_port()}" for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", *ports,
                        f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                       check=True, capture_output=True, text=True, timeout=120)
        address = f"127.0.0.1:{port}"
        os.environ["RAY_JOB_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
        ray.init(address=address, logging_level=logging.WARNING)
        yield address
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"ray start failed: {err.stdout[-2000:]} {err.stderr[-2000:]}") from err
    finally:
        ray.shutdown()
        _stop_cluster(temp_dir, port)

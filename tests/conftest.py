"""Shared fixtures: one local Ray cluster per session and one tiny checkpoint cache."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache directory holding freshly built tiny checkpoints."""
    from pipeline.tiny import ensure_tiny_checkpoints

    cache = tmp_path_factory.mktemp("minutereel-cache")
    ensure_tiny_checkpoints(cache)
    return cache


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster: two CPU slots, like this machine. Yields its GCS address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()

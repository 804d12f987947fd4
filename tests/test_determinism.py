"""The same request gives the same decoded frames whatever the worker count, in every mode."""

import numpy as np
import pytest

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig
from pipeline.video_io import read_video

MODES = ("chain", "keyframes", "bridge")


def _render_all(cache, workers, out_dir):
    from orchestrator.engine import RenderEngine

    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=cache), parallel=ParallelConfig(workers=workers)))
    try:
        return {
            mode: read_video(engine.render(
                RenderRequest(prompt="a fox", duration_s=5.0, mode=mode, segment_frames=33, seed=7),
                out_dir / f"{mode}-{workers}.mp4",
            ).path)[0]
            for mode in MODES
        }
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def renders(ray_cluster, tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("determinism")
    return {workers: _render_all(tiny_cache, workers, out) for workers in (1, 2)}


@pytest.mark.parametrize("mode", MODES)
def test_one_and_two_workers_give_identical_frames(renders, mode):
    one, two = renders[1][mode], renders[2][mode]
    assert one.shape == two.shape == (80, 128, 128, 3)
    np.testing.assert_array_equal(one, two)


def test_modes_differ(renders):
    frames = renders[2]
    assert not np.array_equal(frames["chain"], frames["bridge"])

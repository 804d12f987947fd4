"""Parallel rendering against the loop a user would write by hand.

Renders the default 60 s tiny video three ways, in one script on one machine:

- baseline: a plain diffusers loop in this process (one thread, like one worker): a T2I keyframe,
  then the same segments minutereel's `chain` plan renders, each I2V segment started from the
  previous segment's frame at the start of their overlap (the paper's sliding window), frames
  crossfaded and piped into the same ffmpeg encoder.
- minutereel, 1 worker, `chain` mode: the overhead of the orchestration (ratio to baseline).
- minutereel, 2 workers, `bridge` mode: the speed-up over 1 worker, and parallel efficiency.

Model loading and Ray start-up are excluded from all three (pools are warm, as on a server);
`python -m bench.minute` times the whole command instead.

    python -m bench.parallel
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from actors.config import ParallelConfig
from bench.minute import RESULTS, _machine
from orchestrator.config import EngineConfig
from orchestrator.engine import RenderEngine, connect_ray
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig, default_cache_dir
from pipeline.generate import SegmentGenerator, SegmentRequest
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher
from pipeline.tiny import ensure_tiny_checkpoints
from pipeline.video_io import VideoWriter, read_video

PROMPT = "a lighthouse on a cliff at dusk, waves rolling in"


def baseline(cache: Path, out: Path) -> float:
    """The hand-written loop: seconds to render and encode the chain plan in this process."""
    torch.set_num_threads(1)
    plan = plan_render(RenderRequest(prompt=PROMPT, mode="chain"), load_preset("tiny"))
    generator = SegmentGenerator(ModelConfig(cache_dir=cache), torch.device("cpu"))
    generator.keyframe("warm-up", 0, 32, 32, steps=1)
    started = time.perf_counter()
    first = generator.keyframe(PROMPT, plan.keyframes[0].seed, plan.width, plan.height)
    stitcher, written = OverlapStitcher(), 0
    with VideoWriter(out, plan.width, plan.height, plan.fps) as writer:
        for spec in plan.segments:
            request = SegmentRequest(PROMPT, spec.seed, spec.num_frames, plan.width, plan.height, first)
            frames = generator.segment(request)
            first = frames[spec.num_frames - spec.overlap_next] if spec.overlap_next else None
            final = stitcher.add(frames, spec.overlap_prev, spec.overlap_next)[:plan.total_frames - written]
            writer.write(final)
            written += len(final)
    return time.perf_counter() - started


def minutereel(cache: Path, workers: int, mode: str, out: Path) -> tuple[float, int]:
    """Seconds for a warm pool of `workers` to render the video in `mode`, and its segment count."""
    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=cache), parallel=ParallelConfig(workers=workers)))
    try:
        result = engine.render(RenderRequest(prompt=PROMPT, mode=mode), out)
    finally:
        engine.shutdown()
    return result.seconds, len(result.plan.segments)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cache = Path(os.environ.get("MINUTEREEL_CACHE") or default_cache_dir())
    ensure_tiny_checkpoints(cache)
    connect_ray(None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = baseline(cache, tmp / "baseline.mp4")
        one, one_segments = minutereel(cache, 1, "chain", tmp / "one.mp4")
        two, two_segments = minutereel(cache, 2, "bridge", tmp / "two.mp4")
        frames = {name: read_video(tmp / f"{name}.mp4")[1].frames for name in ("baseline", "one", "two")}
    ray.shutdown()
    assert set(frames.values()) == {960}, frames
    rows = [
        {"run": "baseline: diffusers loop, 1 process", "segments": one_segments, "seconds": round(base, 2),
         "ratio": 1.0},
        {"run": "minutereel 1 worker, chain", "segments": one_segments, "seconds": round(one, 2),
         "ratio": round(one / base, 3)},
        {"run": "minutereel 2 workers, bridge", "segments": two_segments, "seconds": round(two, 2),
         "ratio": round(two / base, 3)},
    ]
    speedup = one / two
    print(f"{'run':<38} {'segments':>8} {'seconds':>8} {'vs baseline':>11}")
    for row in rows:
        print(f"{row['run']:<38} {row['segments']:>8} {row['seconds']:>8.1f} {row['ratio']:>11.3f}")
    print(f"overhead of 1 worker over the loop: {one / base:.3f}x; 2 workers vs 1: {speedup:.2f}x faster "
          f"(parallel efficiency {speedup / 2:.0%})")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "parallel", "command": "python -m bench.parallel", "machine": _machine(), "rows": rows,
              "overhead_1_worker": round(one / base, 3), "speedup_2_vs_1": round(speedup, 3),
              "parallel_efficiency": round(speedup / 2, 3), "video_frames": 960}
    (RESULTS / "parallel.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Where one minute of video in one minute is reached: a scaling model fed by measured and
published costs.

The model replays minutereel's own plan for a 60 s, 16 fps request (960 frames, 81-frame segments,
8-frame overlaps) through a simulator of the Dispatcher (each idle group takes the next ready
task, keyframes first, then segments by wave and index) with W = GPUs / N shard groups of
sequence-parallel degree N, and reports the predicted wall time per mode and split.

Inputs:
1. Measured here (tiny preset, one CPU thread): a keyframe's and a segment's render time. The
   simulator's prediction for the CPU pools is checked against bench.parallel's measured runs.
2. Published (see BENCHMARKS.md for sources): the time of one Wan2.1-I2V-14B 480P transformer
   forward for an 81-frame segment on one GPU, and the speed-up of Ulysses sequence parallelism
   at 2, 4 and 8 GPUs on one node.

    python -m bench.scaling
"""

from __future__ import annotations

import heapq
import json
import os
import time
from pathlib import Path

import torch

from bench.minute import RESULTS, _machine
from orchestrator.plan import RenderPlan
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig, default_cache_dir
from pipeline.generate import SegmentGenerator, SegmentRequest
from pipeline.presets import load_preset
from pipeline.tiny import ensure_tiny_checkpoints

# Published inputs (sources in BENCHMARKS.md).
WAN_I2V_480P_FORWARD_S = 366.04 / (40 * 2)  # H200: 81 frames, 40 steps with CFG (2 forwards/step) in 366.04 s
ULYSSES_SPEEDUP = {1: 1.0, 2: 1904.08 / 925.04, 4: 1904.08 / 514.08, 8: 1904.08 / 337.58}  # xDiT, H100
DISTILLED_STEPS = 4  # CFG-free, step-distilled I2V (the Magic 1-For-1 recipe): one forward per step
KEYFRAME_S = 1.0  # assumed: a 4-step FLUX.1-schnell keyframe at 832x480 on one GPU
GPUS_PER_NODE = 8


def simulate(plan: RenderPlan, workers: int, keyframe_s: float, segment_s) -> float:
    """Wall time of `plan` on `workers` groups, scheduled like the Dispatcher. `segment_s(frames)`."""
    keyframes_done: set[int] = set()
    segments_done: set[int] = set()
    pending = [("keyframe", k.index) for k in plan.keyframes]
    pending += [("segment", s.index) for s in sorted(plan.segments, key=lambda s: (s.wave, s.index))]
    running: list[tuple[float, str, int]] = []
    now, idle = 0.0, workers

    def ready(task):
        kind, index = task
        if kind == "keyframe":
            return True
        refs = plan.segments[index].dependencies()
        return all((r.index in keyframes_done) if r.source == "keyframe" else (r.index in segments_done) for r in refs)

    while pending or running:
        for task in [t for t in pending if ready(t)]:
            if not idle:
                break
            pending.remove(task)
            kind, index = task
            cost = keyframe_s if kind == "keyframe" else segment_s(plan.segments[index].num_frames)
            heapq.heappush(running, (now + cost, kind, index))
            idle -= 1
        now, kind, index = heapq.heappop(running)
        (keyframes_done if kind == "keyframe" else segments_done).add(index)
        idle += 1
    return now


def _plans() -> dict[str, RenderPlan]:
    preset = load_preset("tiny")  # same frame rule and maximum (81) as the Wan 2.1 presets
    modes = ("chain", "keyframes", "bridge")
    return {mode: plan_render(RenderRequest(prompt="x", mode=mode), preset) for mode in modes}


def measure_tiny(cache: Path) -> tuple[float, float]:
    """Seconds for one keyframe and one 81-frame segment of the tiny preset on one thread (median of 3)."""
    torch.set_num_threads(1)
    generator = SegmentGenerator(ModelConfig(cache_dir=cache), torch.device("cpu"))
    first = generator.keyframe("warm-up", 0, 128, 128)
    keyframe, segment = [], []
    for seed in range(3):
        started = time.perf_counter()
        generator.keyframe("x", seed, 128, 128)
        keyframe.append(time.perf_counter() - started)
        started = time.perf_counter()
        generator.segment(SegmentRequest("x", seed, 81, 128, 128, first))
        segment.append(time.perf_counter() - started)
    return sorted(keyframe)[1], sorted(segment)[1]


def main() -> None:
    cache = Path(os.environ.get("MINUTEREEL_CACHE") or default_cache_dir())
    ensure_tiny_checkpoints(cache)
    plans = _plans()
    keyframe_s, segment_s = measure_tiny(cache)
    per_frame = segment_s / 81
    check = {
        "chain, 1 worker": simulate(plans["chain"], 1, keyframe_s, lambda f: per_frame * f),
        "bridge, 2 workers": simulate(plans["bridge"], 2, keyframe_s, lambda f: per_frame * f),
    }
    measured_path = RESULTS / "parallel.json"
    measured = {}
    if measured_path.exists():
        rows = json.loads(measured_path.read_text())["rows"]
        measured = {"chain, 1 worker": rows[1]["seconds"], "bridge, 2 workers": rows[2]["seconds"]}
    print(f"measured on this CPU: keyframe {keyframe_s:.3f}s, 81-frame segment {segment_s:.3f}s (one thread)")
    print(f"{'CPU check':<20} {'predicted s':>12} {'measured s':>11}")
    for name, predicted in check.items():
        print(f"{name:<20} {predicted:>12.1f} {measured.get(name, float('nan')):>11.1f}")

    gpu_segment_s = DISTILLED_STEPS * WAN_I2V_480P_FORWARD_S  # 81 frames, one GPU
    rows = []
    for gpus in (1, 8, 16, 64):
        for mode, plan in plans.items():
            for degree in (1, 2, 4, 8):
                if degree > min(gpus, GPUS_PER_NODE):
                    continue
                workers = 1 if mode == "chain" else gpus // degree  # chain cannot use more than one group
                speedup = ULYSSES_SPEEDUP[degree]
                wall = simulate(plan, workers, KEYFRAME_S, lambda f, s=speedup: gpu_segment_s * f / 81 / s)
                rows.append({"gpus": gpus, "mode": mode, "sp_degree": degree, "groups": workers,
                             "wall_s": round(wall, 1), "minute_in_a_minute": wall <= 60.0})
    print(f"\nWan2.1-I2V-14B 480P, 4 distilled steps, {len(plans['bridge'].segments)} segments for 60 s at 16 fps; "
          f"{gpu_segment_s:.1f}s per 81-frame segment on one GPU")
    print(f"{'GPUs':>5} {'mode':<10} {'SP':>3} {'groups':>6} {'wall s':>8}  60 s?")
    for row in rows:
        mark = "yes" if row["minute_in_a_minute"] else ""
        print(f"{row['gpus']:>5} {row['mode']:<10} {row['sp_degree']:>3} {row['groups']:>6} "
              f"{row['wall_s']:>8.1f}  {mark}")
    best = {gpus: min((r for r in rows if r["gpus"] == gpus), key=lambda r: r["wall_s"]) for gpus in (1, 8, 16, 64)}
    first_minute = next((g for g in (1, 8, 16, 64) if best[g]["minute_in_a_minute"]), None)
    print(f"\none minute of video in one minute first reached at {first_minute} GPUs "
          f"({best[first_minute]['mode']}, SP {best[first_minute]['sp_degree']})" if first_minute else
          "\none minute in one minute is not reached at 64 GPUs under these inputs")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "scaling", "command": "python -m bench.scaling", "machine": _machine(),
              "measured": {"keyframe_s": keyframe_s, "segment_81_frames_s": segment_s},
              "cpu_check": {"predicted": check, "measured": measured},
              "inputs": {"wan_i2v_480p_forward_s": WAN_I2V_480P_FORWARD_S, "ulysses_speedup": ULYSSES_SPEEDUP,
                         "distilled_steps": DISTILLED_STEPS, "keyframe_s": KEYFRAME_S,
                         "gpus_per_node": GPUS_PER_NODE, "segment_s_one_gpu": gpu_segment_s},
              "rows": rows, "first_minute_in_a_minute_gpus": first_minute}
    (RESULTS / "scaling.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Where one minute of video in one minute is reached: a scaling model fed by measured and
published costs.

The model replays minutereel's own plan for a 60 s, 16 fps request (960 frames, 81-frame segments,
8-frame overlaps) through a simulator of the Dispatcher (each idle group takes the next ready
task of the plan's TaskGraph, the one PlanRun uses) with W = GPUs / N shard groups of
sequence-parallel degree N, and reports the predicted wall time per mode and split, with the head's
output stage before and after pieces.

Inputs:
1. Measured here (tiny preset, one CPU thread): a keyframe's and a segment's render time. The
   simulator's prediction for the CPU pools is checked against bench.parallel's measured runs.
2. Published (see BENCHMARKS.md for sources): the time of one Wan2.1-I2V-14B 480P transformer
   forward for an 81-frame segment on one GPU, and the speed-up of Ulysses sequence parallelism
   at 2, 4 and 8 GPUs on one node.
3. The head stage, measured here at 832x480 and 1280x720 (`measure_head`): before pieces, the head
   pulls every raw frame over its link and stitches and encodes it in one process; with pieces, it
   pulls each segment's edges, joins them and encodes the lead, the rendering node encodes the body,
   and the head joins the pieces by stream copy (`output_wall`). Assumed: a 3 GB/s head link, and a
   720p forward costing 3.82x a 480p one (SIZES).

    python -m bench.scaling
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.minute import RESULTS, _machine
from orchestrator.graph import Task, TaskGraph
from orchestrator.plan import RenderPlan
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig, default_cache_dir
from pipeline.generate import SegmentGenerator, SegmentRequest
from pipeline.pieces import PieceFormat, concat_pieces, encode_piece
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher
from pipeline.testsrc import moving_pattern
from pipeline.tiny import ensure_tiny_checkpoints
from pipeline.video_io import VideoWriter

# Published inputs (sources in BENCHMARKS.md).
WAN_I2V_480P_FORWARD_S = 366.04 / (40 * 2)  # H200: 81 frames, 40 steps with CFG (2 forwards/step) in 366.04 s
ULYSSES_SPEEDUP = {1: 1.0, 2: 1904.08 / 925.04, 4: 1904.08 / 514.08, 8: 1904.08 / 337.58}  # xDiT, H100
DISTILLED_STEPS = 4  # CFG-free, step-distilled I2V (the Magic 1-For-1 recipe): one forward per step
KEYFRAME_S = 1.0  # assumed: a 4-step FLUX.1-schnell keyframe at 832x480 on one GPU
GPUS_PER_NODE = 8
LINK_GB_S = 3.0  # assumed: the head's network link, GB/s (25 Gb/s Ethernet)
# Assumed: a 1280x720 forward costs 2.31x the tokens of 832x480, and attention (about half the time at 480p) grows
# with their square: 2.31 * (0.5 + 0.5 * 2.31) = 3.82x.
SIZES = {"480p": (832, 480, 1.0), "720p": (1280, 720, 2.31 * (0.5 + 0.5 * 2.31))}


def simulate(plan: RenderPlan, workers: int, keyframe_s: float, segment_s) -> tuple[float, dict[int, float]]:
    """Render wall time of `plan` on `workers` groups, scheduled as the Dispatcher does (each idle group takes the
    TaskGraph's next ready task), and when each segment finished. `segment_s(frames)`: a segment's render time."""
    graph = TaskGraph(plan)
    running: list[tuple[float, int, Task]] = []
    finished: dict[int, float] = {}
    now, idle, order = 0.0, workers, 0
    while graph.pending or running:
        while idle and (task := graph.take_ready()) is not None:
            cost = keyframe_s if task.kind == "keyframe" else segment_s(task.spec.num_frames)
            heapq.heappush(running, (now + cost, order, task))
            order, idle = order + 1, idle - 1
        now, _, task = heapq.heappop(running)
        graph.done(task, ANY_FRAMES)  # only whether the conditioning frames exist matters here
        if task.kind == "segment":
            finished[task.spec.index] = now
        idle += 1
    return now, finished


class _AnyFrames:
    """Stands in for a task's frames: every frame index exists."""

    def __getitem__(self, index: int) -> bool:
        return True


ANY_FRAMES = _AnyFrames()


@dataclass(frozen=True)
class HeadCosts:
    """What the head and the nodes spend on one plan's output at one size, measured on this CPU (seconds)."""

    width: int
    height: int
    stitch_encode_s_per_frame: float  # before: the head stitches and encodes every frame (one process)
    join_s: float  # after, on the head, per segment: colour fit and crossfade of the overlap from its edges
    lead_encode_s: float  # after, on the head, per seam: the crossfaded overlap's own small piece
    body_encode_s_per_frame: float  # after, on the rendering node: one x264 thread per piece
    concat_s_per_mb: float  # after: the head's stream-copy join of the pieces
    piece_mb_per_frame: float

    @property
    def raw_mb_per_frame(self) -> float:
        return self.width * self.height * 3 / 1e6


def measure_head(width: int, height: int, fps: int = 16) -> HeadCosts:
    """Head and node costs at `width`x`height` on a drifting test pattern, 81-frame segments, 8-frame overlaps."""
    frames = [moving_pattern(73 * i, 81, height, width, period=96) for i in range(3)]
    frames = [np.clip(f.astype(np.int16) + 6 * (i - 1), 0, 255).astype(np.uint8) for i, f in enumerate(frames)]
    with tempfile.TemporaryDirectory() as tmp:
        stitcher = OverlapStitcher(color_correction=True)
        started = time.perf_counter()
        with VideoWriter(Path(tmp) / "old.mp4", width, height, fps) as writer:
            for i, segment in enumerate(frames):
                writer.write(stitcher.add(segment, 8 if i else 0, 8 if i < 2 else 0))
        stitch_encode = (time.perf_counter() - started) / (3 * 81 - 16)
        stitcher = OverlapStitcher(color_correction=True)
        stitcher.join(frames[0][:0], frames[0][-8:])
        started = time.perf_counter()
        lead, lut = stitcher.join(frames[1][:8], frames[1][-8:])
        join = time.perf_counter() - started
        fmt = PieceFormat(width, height, fps)
        started = time.perf_counter()
        encode_piece(fmt, 0, lead, lead[:0])
        lead_encode = time.perf_counter() - started
        started = time.perf_counter()
        body = encode_piece(fmt, 8, lead[:0], frames[1][8:-8], lut)
        body_encode = (time.perf_counter() - started) / 65
        pieces = []
        for i in range(20):
            path = Path(tmp) / f"{i}.ts"
            path.write_bytes(body.data)
            pieces.append((path, 65))
        started = time.perf_counter()
        concat_pieces(pieces, Path(tmp) / "joined.mp4", "libx264", fps)
        concat = (time.perf_counter() - started) / (20 * len(body.data) / 1e6)
    return HeadCosts(width, height, round(stitch_encode, 5), round(join, 4), round(lead_encode, 4),
                     round(body_encode, 5), round(concat, 5), round(len(body.data) / 65 / 1e6, 5))


def output_wall(plan: RenderPlan, finished: dict[int, float], costs: HeadCosts, pieces: bool,
                link_gb_s: float = LINK_GB_S) -> float:
    """When the video file is complete: the head takes segments in order as they finish. Before pieces it pulls
    every raw frame over its link, then stitches and encodes it; with pieces it pulls the edges, joins and
    encodes the lead, while the node encodes the body (after the join in chain mode, whose colour correction
    the body waits for; at once in the others), then joins every piece by stream copy."""
    head = 0.0
    chain = plan.mode == "chain"
    mb = 0.0
    for spec in plan.segments:
        done = finished[spec.index]
        if not pieces:
            transfer = spec.num_frames * costs.raw_mb_per_frame / 1e3 / link_gb_s
            head = max(head, done + transfer) + (spec.num_frames - spec.overlap_next) * costs.stitch_encode_s_per_frame
            continue
        edges = (spec.overlap_prev + spec.overlap_next + 3) * costs.raw_mb_per_frame / 1e3 / link_gb_s
        joined = max(head, done + edges) + costs.join_s + (costs.lead_encode_s if spec.overlap_prev else 0.0)
        body = spec.num_frames - spec.overlap_prev - spec.overlap_next
        piece = (joined if chain else done) + body * costs.body_encode_s_per_frame
        piece += body * costs.piece_mb_per_frame / 1e3 / link_gb_s
        head = max(joined, piece)
        mb += body * costs.piece_mb_per_frame
    return head + (mb * costs.concat_s_per_mb if pieces else 0.0)


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
        "chain, 1 worker": simulate(plans["chain"], 1, keyframe_s, lambda f: per_frame * f)[0],
        "bridge, 2 workers": simulate(plans["bridge"], 2, keyframe_s, lambda f: per_frame * f)[0],
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

    costs = {size: measure_head(width, height) for size, (width, height, _) in SIZES.items()}
    for size, c in costs.items():
        print(f"head costs at {size} on this CPU: before {1 / c.stitch_encode_s_per_frame:.1f} frames/s stitched and "
              f"encoded; after: join {c.join_s:.2f}s + lead piece {c.lead_encode_s:.2f}s per seam, body "
              f"{1 / c.body_encode_s_per_frame:.1f} frames/s per node thread, "
              f"concat {c.concat_s_per_mb * 1e3:.2f} ms/MB")

    rows = []
    for size, (_, _, forward_scale) in SIZES.items():
        gpu_segment_s = DISTILLED_STEPS * WAN_I2V_480P_FORWARD_S * forward_scale  # 81 frames, one GPU
        for gpus in (1, 8, 16, 64):
            for mode, plan in plans.items():
                for degree in (1, 2, 4, 8):
                    if degree > min(gpus, GPUS_PER_NODE):
                        continue
                    workers = 1 if mode == "chain" else gpus // degree  # chain cannot use more than one group
                    speedup = ULYSSES_SPEEDUP[degree]
                    render, finished = simulate(plan, workers, KEYFRAME_S,
                                                lambda f, s=speedup, g=gpu_segment_s: g * f / 81 / s)
                    before = output_wall(plan, finished, costs[size], pieces=False)
                    after = output_wall(plan, finished, costs[size], pieces=True)
                    rows.append({"size": size, "gpus": gpus, "mode": mode, "sp_degree": degree, "groups": workers,
                                 "render_s": round(render, 1), "wall_before_s": round(before, 1),
                                 "wall_after_s": round(after, 1), "minute_in_a_minute": after <= 60.0})
    print(f"\n4 distilled CFG-free steps, {len(plans['bridge'].segments)} segments for 60 s at 16 fps; one 81-frame "
          f"segment on one GPU: " + ", ".join(f"{size} {DISTILLED_STEPS * WAN_I2V_480P_FORWARD_S * scale:.1f}s"
                                              for size, (_, _, scale) in SIZES.items()))
    print(f"{'size':>5} {'GPUs':>5} {'mode':<10} {'SP x groups':>11} {'render s':>9} {'head before':>12} "
          f"{'head after':>11}  60 s?")
    best = {}
    for row in rows:
        key = (row["size"], row["gpus"], row["mode"])
        if key not in best or row["wall_after_s"] < best[key]["wall_after_s"]:
            best[key] = row
    for row in best.values():
        mark = "yes" if row["minute_in_a_minute"] else ""
        print(f"{row['size']:>5} {row['gpus']:>5} {row['mode']:<10} {row['sp_degree']:>4} x {row['groups']:<4} "
              f"{row['render_s']:>9.1f} {row['wall_before_s']:>12.1f} {row['wall_after_s']:>11.1f}  {mark}")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "scaling", "command": "python -m bench.scaling", "machine": _machine(),
              "measured": {"keyframe_s": keyframe_s, "segment_81_frames_s": segment_s,
                           "head": {size: asdict(c) for size, c in costs.items()}},
              "cpu_check": {"predicted": check, "measured": measured},
              "inputs": {"wan_i2v_480p_forward_s": WAN_I2V_480P_FORWARD_S, "ulysses_speedup": ULYSSES_SPEEDUP,
                         "distilled_steps": DISTILLED_STEPS, "keyframe_s": KEYFRAME_S,
                         "gpus_per_node": GPUS_PER_NODE, "link_gb_s": LINK_GB_S,
                         "forward_scale": {size: scale for size, (_, _, scale) in SIZES.items()}},
              "rows": rows, "best": list(best.values())}
    (RESULTS / "scaling.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The head off the critical path: one head process that stitches and encodes a whole minute of 720p, against
pieces encoded where the segments were rendered and joined on the head by stream copy.

    python -m bench.encode [--seconds 60]

60 s of 1280x720 at 24 fps in 81-frame segments with 8-frame overlaps (a chain plan: colour correction on, so
every body waits for the join of the segment before it, the hardest case for pieces). Two Ray actors (one CPU
each, a local cluster of 2 CPUs) stand in for shard groups: each "renders" a segment by copying it out of a
pattern drawn before the clock starts (pipeline.testsrc, a drifting pattern with a per-segment brightness
offset for the colour correction to undo), so what is timed is the output path alone. Measured in one run,
same plan, same actors:

- `head`: what the head did before pieces. Every segment's frames travel to the driver (ray.get), which
  stitches them in order (OverlapStitcher) into one libx264 process (VideoWriter, crf 18).
- `pieces`: the engine's path (PlanRun and its OutputSink with RayFrames): only each segment's edges travel;
  its body is encoded beside the actor that drew it, its lead on the head; the head joins the pieces by stream
  copy (concat demuxer).

Both outputs are decoded and compared, frame for frame, with the stitched frames they encode (PSNR); the bytes
that reached the head are counted (raw frames for `head`, edges and piece bytes for `pieces`) and so is the
head's CPU time (the driver process and the ffmpeg processes it ran), and the machine's (every process, from
/proc/stat).

The floor: libx264 alone, at the same settings, encoding one segment's frames (one thread, as pieces do), scaled
to the whole video: no output path on this machine's cores can be faster than that CPU time over its cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from bench.machine import describe_machine, machine_cpu
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from orchestrator.scheduler import PlanRun
from orchestrator.transport import RayFrames
from pipeline.pieces import PieceFormat, encode_piece
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher
from pipeline.testsrc import moving_pattern
from pipeline.video_io import VideoWriter, ffmpeg_version, iter_frames

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH, HEIGHT, FPS, SEGMENT, OVERLAP = 1280, 720, 24, 81, 8
WORKERS = 2


PERIOD = 96  # the pattern repeats every PERIOD frames: drawn once per actor, then segments are cheap copies
SHIFTS = (-6, 0, 6)  # brightness offsets, one per segment in turn: colour drift for the correction to undo


def draw_period(shift: int) -> np.ndarray:
    frames = moving_pattern(0, PERIOD, HEIGHT, WIDTH, seed=0, period=PERIOD)
    return np.clip(frames.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def draw_segment(start: int, count: int, index: int, periods: dict | None = None) -> np.ndarray:
    """Segment `index`'s frames: output frames start .. start + count - 1 of one drifting pattern, a little
    brighter or darker per segment (what colour drift between segments looks like)."""
    shift = SHIFTS[index % len(SHIFTS)]
    period = periods[shift] if periods is not None else draw_period(shift)
    return np.take(period, np.arange(start, start + count) % PERIOD, axis=0)


@ray.remote(num_cpus=1)
class Drawer:
    """A stand-in shard group. It draws the pattern once (before the clock starts), so 'rendering' a segment
    is a copy: the runs measure the output path, not the drawing."""

    def __init__(self):
        self.periods = {shift: draw_period(shift) for shift in SHIFTS}

    def segment(self, start: int, count: int, index: int) -> np.ndarray:
        return draw_segment(start, count, index, self.periods)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


class Group:
    """What PlanRun.submit calls: a ShardGroup's two render methods, on a Drawer."""

    def __init__(self, drawer):
        self.drawer = drawer
        self._node = ray.get(drawer.node.remote())

    def node(self) -> str:
        return self._node

    def render_segment(self, request, task_id: str = ""):
        spec = self.specs[int(task_id.rsplit(":", 1)[1])]
        return self.drawer.segment.remote(spec.start_frame, spec.num_frames, spec.index)


def _plan(seconds: float):
    request = RenderRequest(prompt="a fox", duration_s=seconds, fps=FPS, mode="chain", segment_frames=SEGMENT,
                            overlap_frames=OVERLAP)
    return plan_render(request, load_preset("tiny")).model_copy(update={"width": WIDTH, "height": HEIGHT})


def _run_head(plan, drawers: list, out: Path) -> dict:
    """The old head: every frame to the driver, stitched and encoded there."""
    stitcher = OverlapStitcher(color_correction=True)
    received = 0
    started = time.perf_counter()
    refs = [drawers[s.index % WORKERS].segment.remote(s.start_frame, s.num_frames, s.index) for s in plan.segments]
    written = 0
    with VideoWriter(out, WIDTH, HEIGHT, FPS, crf=18) as writer:
        for spec, ref in zip(plan.segments, refs, strict=True):
            frames = ray.get(ref)
            received += frames.nbytes
            frames = stitcher.add(frames, spec.overlap_prev, spec.overlap_next)[:plan.total_frames - written]
            writer.write(frames)
            written += len(frames)
    return {"run": "head: stitch + encode in one head process", "wall_s": round(time.perf_counter() - started, 2),
            "bytes_to_head": received}


def _run_pieces(plan, drawers: list, out: Path) -> dict:
    """The engine's path, driven as the Dispatcher drives it (one task per idle drawer)."""
    groups = [Group(d) for d in drawers]
    for group in groups:
        group.specs = {s.index: s for s in plan.segments}
    transport = RayFrames()
    transport.prepare(groups)  # as the engine does at start-up
    received = [0]
    fmt = PieceFormat(WIDTH, HEIGHT, FPS, crf=18)
    started = time.perf_counter()
    run = PlanRun(plan, fmt, out, OverlapStitcher(color_correction=True), transport=transport)
    run.start()
    for task in [t for t in run.pending if t.kind == "keyframe"]:  # the first frame: given, not timed as work
        run.graph.pending.remove(task)
        run.complete(task, np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    running, idle = {}, list(groups)
    while run.active:
        while idle and (task := run.take_ready()) is not None:
            group = idle.pop(0)
            running[run.submit(task, group)] = (task, group)
        if not running:
            run.finished.wait(0.01)
            continue
        [ref], _ = ray.wait(list(running), num_returns=1)
        task, group = running.pop(ref)
        edges = ray.get(ref)
        received[0] += sum(frame.nbytes for frame in edges.values())
        run.complete(task, edges)
        idle.append(group)
    run.wait()
    wall = time.perf_counter() - started
    transport.shutdown()
    # Piece bytes: the joined file is their payload (stream copy), a little less than the pieces' MPEG-TS framing.
    return {"run": f"pieces: {WORKERS} worker processes encode, the head joins by stream copy",
            "wall_s": round(wall, 2), "bytes_to_head": received[0] + out.stat().st_size}


def _head_cpu() -> float:
    """CPU seconds of this process and its finished children (its ffmpeg encoders and joins; Ray's processes are
    not its children to wait for, so they do not count)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _x264_floor(plan) -> float:
    """CPU seconds libx264 alone needs for the whole video at these settings: one segment's body encoded as a
    piece (one thread), scaled by frames."""
    fmt = PieceFormat(WIDTH, HEIGHT, FPS, crf=18)
    frames = draw_segment(0, SEGMENT - OVERLAP, 0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    encode_piece(fmt, 0, frames[:0], frames)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return cpu * plan.total_frames / len(frames)


def _psnr(path: Path, plan) -> tuple[int, float]:
    """Frames decoded from `path` and their PSNR (dB) against the stitched frames they encode."""
    stitcher = OverlapStitcher(color_correction=True)
    periods = {shift: draw_period(shift) for shift in SHIFTS}
    expected = (stitcher.add(draw_segment(s.start_frame, s.num_frames, s.index, periods), s.overlap_prev,
                             s.overlap_next) for s in plan.segments)
    squared, count, pending = 0.0, 0, np.zeros((0, HEIGHT, WIDTH, 3), np.uint8)
    for batch in iter_frames(path, chunk=32):
        while len(pending) < len(batch):
            pending = np.concatenate([pending, next(expected)])
        squared += float(((batch.astype(np.float32) - pending[:len(batch)]) ** 2).sum())
        count, pending = count + len(batch), pending[len(batch):]
    mse = squared / (count * HEIGHT * WIDTH * 3)
    return count, round(10 * math.log10(255**2 / mse), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    plan = _plan(args.seconds)
    ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR")
    drawers = [Drawer.remote() for _ in range(WORKERS)]
    ray.get([d.segment.remote(0, 1, 0) for d in drawers])  # started before the clock
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("head", _run_head), ("pieces", _run_pieces)):
            out = Path(tmp) / f"{name}.mp4"
            cpu, machine = _head_cpu(), machine_cpu()
            row = run(plan, drawers, out)
            row["head_cpu_s"] = round(_head_cpu() - cpu, 1)
            if machine is not None:
                row["machine_cpu_s"] = round(machine_cpu() - machine, 1)
            row["frames"], row["psnr_db"] = _psnr(out, plan)
            row["mb_to_head_per_minute"] = round(row.pop("bytes_to_head") / 1e6 * 60 / args.seconds, 1)
            rows.append(row)
            print(json.dumps(row))
    ray.shutdown()
    floor = _x264_floor(plan)
    cores = os.cpu_count() or 1
    print(f"floor: libx264 alone needs {floor:.1f} CPU s for this video at these settings: {floor / cores:.1f} s of "
          f"wall on {cores} cores at best, whichever process encodes")
    speedup = round(rows[0]["wall_s"] / rows[1]["wall_s"], 2)
    bound = None
    if "machine_cpu_s" in rows[1]:
        bound = round(rows[0]["wall_s"] / (rows[1]["machine_cpu_s"] / cores), 2)
        print(f"CPU bound: pieces used {rows[1]['machine_cpu_s']} CPU s of this machine: on {cores} cores no schedule "
              f"of that work beats {rows[1]['machine_cpu_s'] / cores:.1f} s, at most {bound}x the head run; "
              f"{rows[1]['machine_cpu_s'] - floor:.1f} CPU s of it is not libx264")
    print(f"{plan.total_frames} frames ({args.seconds:g} s of {WIDTH}x{HEIGHT} at {FPS} fps, {len(plan.segments)} "
          f"segments): pieces {speedup}x faster end to end than the head alone; "
          f"{rows[0]['mb_to_head_per_minute']} MB vs {rows[1]['mb_to_head_per_minute']} MB to the head per minute, "
          f"{rows[0]['head_cpu_s']} vs {rows[1]['head_cpu_s']} CPU s on the head")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "encode", "command": f"python -m bench.encode --seconds {args.seconds:g}",
              "machine": describe_machine(numpy=np.__version__, ffmpeg=ffmpeg_version()),
              "video": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": plan.total_frames,
                        "segments": len(plan.segments), "segment_frames": SEGMENT, "overlap": OVERLAP},
              "rows": rows, "speedup": speedup, "cpu_bound_speedup": bound,
              "floor": {"x264_cpu_s": round(floor, 1), "cores": cores, "wall_s": round(floor / cores, 1)}}
    (RESULTS / "encode.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

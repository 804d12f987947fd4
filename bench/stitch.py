"""Stitching cost: peak memory against video length, and blend + encode throughput against plain encoding.

    python -m bench.stitch

Memory: a 60 s and a 600 s tiny-size video (128x128 at 16 fps) are stitched, each size in a fresh
child process. After its imports the child resets its peak-RSS mark (/proc/self/clear_refs), so it
reports the peak RSS of the whole process while stitching (VmHWM) and how much of that is above the
RSS it started with; ffmpeg's peak comes from RUSAGE_CHILDREN. Two paths: `segments` feeds
synthetic 77-frame segments with 8-frame overlaps (as a render does) through the OverlapStitcher and
SeamMeter into VideoWriter; `clips` runs `stitch_clips` on 10 clip files (written beforehand,
outside the measurement). Baseline: the 60 s run; streaming means a ratio near 1.

Throughput: at 480x832 and 720x1280, synthetic 81-frame segments with 8-frame overlaps (every other
one 6 levels brighter, so colour correction has work to do) go through the stitcher into libx264
(crf 18). Baseline: the same number of frames written straight to VideoWriter (encode only). Each
figure is the best of THROUGHPUT_REPEATS runs: the machine is shared, and interference only slows.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import describe_machine
from pipeline.clips import stitch_clips
from pipeline.seams import SeamMeter
from pipeline.stitch import OverlapStitcher
from pipeline.testsrc import moving_pattern
from pipeline.video_io import VideoWriter, ffmpeg_version

RESULTS = Path(__file__).resolve().parent / "results"
FPS, TINY = 16, 128
MEMORY_SECONDS = (60, 600)
SEGMENT, OVERLAP = 77, 8
CLIPS = 10
THROUGHPUT_SIZES = ((480, 832), (720, 1280))
THROUGHPUT_SEGMENT, THROUGHPUT_SEGMENTS, THROUGHPUT_REPEATS = 81, 3, 3


def _machine() -> dict:
    return describe_machine(numpy=np.__version__, ffmpeg=ffmpeg_version())


def _drift(frames: np.ndarray, levels: int) -> np.ndarray:
    return frames if not levels else np.clip(frames.astype(np.int16) + levels, 0, 255).astype(np.uint8)


def _tiny_segments(total: int):
    """(frames, overlap_prev, overlap_next) covering `total` frames; odd segments drifted by +6 levels."""
    for index, start in enumerate(range(0, total, SEGMENT - OVERLAP)):
        last = start + SEGMENT >= total
        yield _drift(moving_pattern(start, SEGMENT, TINY, TINY), 6 * (index % 2)), OVERLAP if index else 0, 0 if last \
            else OVERLAP
        if last:
            return


def _stitch_segments(total: int, out: Path) -> int:
    stitcher, meter, written = OverlapStitcher(), SeamMeter(), 0
    with VideoWriter(out, TINY, TINY, FPS) as writer:
        for frames, overlap_prev, overlap_next in _tiny_segments(total):
            final = stitcher.add(frames, overlap_prev, overlap_next)[: total - written]
            writer.write(final)
            meter.begin_segment(overlap_prev)
            meter.add(final)
            written += len(final)
    return written


def _write_clips(total: int, folder: Path) -> list[Path]:
    """CLIPS clip files that share OVERLAP frames and make `total` frames once stitched."""
    length = (total + (CLIPS - 1) * OVERLAP) // CLIPS
    paths = []
    for i in range(CLIPS):
        count = length if i < CLIPS - 1 else total + (CLIPS - 1) * OVERLAP - length * (CLIPS - 1)
        paths.append(folder / f"clip{i}.mp4")
        with VideoWriter(paths[-1], TINY, TINY, FPS) as writer:
            for start in range(0, count, 256):
                n = min(256, count - start)
                writer.write(_drift(moving_pattern(i * (length - OVERLAP) + start, n, TINY, TINY), 6 * (i % 2)))
    return paths


def _status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def _child(path: str, seconds: int, folder: Path) -> None:
    """Run one memory measurement in this (fresh) process; print its result as JSON."""
    total, out = seconds * FPS, folder / f"out-{path}-{seconds}.mp4"
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS restarts from here: imports do not count
    started = time.perf_counter()
    if path == "segments":
        frames = _stitch_segments(total, out)
    else:
        frames = stitch_clips(sorted(folder.glob(f"clips{seconds}/clip*.mp4")), OVERLAP, out).frames
    wall, peak = time.perf_counter() - started, _status_mib("VmHWM")
    ffmpeg_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"path": path, "seconds": seconds, "frames": frames, "wall_s": round(wall, 2),
                      "peak_rss_mib": round(peak, 1), "above_start_mib": round(peak - before, 1),
                      "ffmpeg_peak_rss_mib": round(ffmpeg_peak, 1)}))


def _measure_memory(folder: Path) -> list[dict]:
    for seconds in MEMORY_SECONDS:
        (folder / f"clips{seconds}").mkdir()
        _write_clips(seconds * FPS, folder / f"clips{seconds}")
    runs = []
    for path in ("segments", "clips"):
        for seconds in MEMORY_SECONDS:
            command = [sys.executable, "-m", "bench.stitch", "--child", path, str(seconds), str(folder)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{path} {seconds}s failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout))
    return runs


def _throughput(height: int, width: int, folder: Path) -> dict:
    """Frames/s of encode only, stitch only, and stitch + encode for THROUGHPUT_SEGMENTS segments."""
    period = THROUGHPUT_SEGMENT - OVERLAP  # the pattern repeats at the segment stride: one segment serves all
    base = moving_pattern(0, THROUGHPUT_SEGMENT, height, width, period=period)
    segments = [base, _drift(base, 6)]
    layout = [(segments[i % 2], OVERLAP if i else 0, OVERLAP if i < THROUGHPUT_SEGMENTS - 1 else 0)
              for i in range(THROUGHPUT_SEGMENTS)]
    frames = THROUGHPUT_SEGMENT * THROUGHPUT_SEGMENTS - OVERLAP * (THROUGHPUT_SEGMENTS - 1)

    def run(stitch: bool, encode: bool) -> float:
        stitcher, meter = OverlapStitcher(), SeamMeter()
        started = time.perf_counter()
        writer = VideoWriter(folder / f"tp{width}.mp4", width, height, FPS) if encode else None
        for seg, overlap_prev, overlap_next in layout:
            final = stitcher.add(seg, overlap_prev, overlap_next) if stitch else seg[overlap_prev:]
            if stitch:
                meter.begin_segment(overlap_prev)
                meter.add(final)
            if writer:
                writer.write(final)
        if writer:
            writer.close()
        return frames / (time.perf_counter() - started)

    best = {}
    for _ in range(THROUGHPUT_REPEATS):
        for key, stitch, encode in (("encode", False, True), ("stitch", True, False), ("both", True, True)):
            best[key] = max(best.get(key, 0.0), run(stitch, encode))
    encode, stitch, both = best["encode"], best["stitch"], best["both"]
    return {"size": f"{width}x{height}", "frames": frames, "encode_fps": round(encode, 1),
            "stitch_fps": round(stitch, 1), "stitch_encode_fps": round(both, 1),
            "stitch_encode_vs_encode": round(both / encode, 3)}


def _print(memory: list[dict], throughput: list[dict]) -> dict:
    print(f"{'path':>9} {'video s':>8} {'frames':>7} {'wall s':>7} {'peak RSS MiB':>13} {'above start':>12} "
          f"{'ffmpeg MiB':>11} {'RSS / 60 s':>11}")
    ratios = {}
    for run in memory:
        base = next(r for r in memory if r["path"] == run["path"] and r["seconds"] == MEMORY_SECONDS[0])
        ratio = run["peak_rss_mib"] / base["peak_rss_mib"]
        ratios[f"{run['path']}_{run['seconds']}s_vs_{MEMORY_SECONDS[0]}s"] = round(ratio, 3)
        print(f"{run['path']:>9} {run['seconds']:>8} {run['frames']:>7} {run['wall_s']:>7.1f} "
              f"{run['peak_rss_mib']:>13.1f} {run['above_start_mib']:>12.1f} {run['ffmpeg_peak_rss_mib']:>11.1f} "
              f"{ratio:>11.3f}")
    print(f"\n{'size':>9} {'frames':>7} {'encode fps':>11} {'stitch fps':>11} {'stitch+encode fps':>18} "
          f"{'vs encode':>10}")
    for t in throughput:
        print(f"{t['size']:>9} {t['frames']:>7} {t['encode_fps']:>11.1f} {t['stitch_fps']:>11.1f} "
              f"{t['stitch_encode_fps']:>18.1f} {t['stitch_encode_vs_encode']:>10.3f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("PATH", "SECONDS", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        memory = _measure_memory(Path(tmp))
        throughput = [_throughput(h, w, Path(tmp)) for h, w in THROUGHPUT_SIZES]
    ratios = _print(memory, throughput)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f}s")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "stitch", "command": "python -m bench.stitch", "machine": _machine(),
              "memory": memory, "memory_ratios": ratios, "throughput": throughput, "total_s": round(total, 1)}
    (RESULTS / "stitch.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""One minute of video in one minute: time the README's default render end to end.

Runs the README's first command, `bash scripts/render.sh` (its set-up check, then `minutereel
render` with the demo prompt in chain mode: tiny preset, 60 s at 16 fps, local Ray cluster sized
to the machine) in a fresh process, as a user would after setup, and reports wall time against
the video's own duration (the real-time factor: below 1.0 is faster than real time) and the worst
seam jump of the render's seam report, and drift: the area of the demo object in the last 10 s
against its area as the world draws it (1.0 = no drift; chained segments used to widen it). The
CLI's own report splits the wall time into start-up (Ray, actors, model load) and render.

    python -m bench.minute [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VIDEO_SECONDS = 60.0
DEMO_PROMPT = "a big yellow ball moving right on a blue background"  # scripts/render.sh's default


def _machine() -> dict:
    import torch

    return describe_machine(torch=torch.__version__)


def _drift(video: Path) -> float:
    """Median area of the demo object over the last 10 s, once a second, over its true area."""
    import numpy as np

    from pipeline import world
    from pipeline.video_io import read_video

    scene = world.scene_from_prompt(DEMO_PROMPT)
    thing = scene.things[0]
    true = world.object_mask(world.render_clip(scene, 1)[0], thing.colour, scene.background).sum()
    frames, info = read_video(video)
    fps = round(float(info.fps))
    last = [world.object_mask(f, thing.colour, scene.background).sum() for f in frames[-10 * fps::fps]]
    return round(float(np.median(last) / true), 2)


def _render_once(out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MINUTEREEL_DEMO_PROMPT")}
    command = ["bash", str(ROOT / "scripts" / "render.sh"), str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"render failed:\n{done.stderr[-3000:]}")
    report = done.stdout.strip().splitlines()[-1]
    render = float(re.search(r"in ([0-9.]+)s$", report).group(1))
    worst = float(re.search(r"worst jump ([0-9.]+)", done.stdout).group(1))
    return {"wall_s": round(wall, 2), "render_s": round(render, 2), "startup_s": round(wall - render, 2),
            "realtime_factor": round(wall / VIDEO_SECONDS, 3), "worst_seam_jump": worst,
            "object_area_ratio_last_10s": _drift(out), "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_render_once(Path(tmp) / f"minute{i}.mp4") for i in range(args.runs)]
    best = min(runs, key=lambda r: r["wall_s"])
    print(f"{'run':>4} {'wall s':>8} {'startup s':>10} {'render s':>9} {'wall / 60 s of video':>22} {'worst seam':>11} "
          f"{'object area, last 10 s / true':>31}")
    for i, r in enumerate(runs):
        print(f"{i:>4} {r['wall_s']:>8.1f} {r['startup_s']:>10.1f} {r['render_s']:>9.1f} {r['realtime_factor']:>22.3f} "
              f"{r['worst_seam_jump']:>11.2f} {r['object_area_ratio_last_10s']:>31.2f}")
    print(f"best: {best['wall_s']:.1f}s wall for {VIDEO_SECONDS:.0f}s of video "
          f"(real-time factor {best['realtime_factor']:.3f}); {best['report']}")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "minute", "command": "python -m bench.minute", "renders": "bash scripts/render.sh",
              "machine": _machine(), "runs": runs,
              "best_wall_s": best["wall_s"], "video_s": VIDEO_SECONDS}
    (RESULTS / "minute.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

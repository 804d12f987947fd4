"""The whole `minutereel render` command, 1 worker against 2, on a running local cluster: what a user waits for.

    python -m bench.command [--runs 2]

Starts one local Ray cluster (`ray start --head`, as many CPU slots as cores) and runs, against it, the
command a user types (`minutereel render`, the tiny preset, 60 s, 16 fps, the demo prompt), `--runs` times each:

- 1 worker, default mode (`chain`): the baseline;
- 2 workers, default mode (`bridge`);
- 1 worker, `--mode bridge`: the same plan as the 2 workers render, so the same work on one worker.

Two ratios: default modes (what a user gets without --mode: with one worker the default is the cheaper chain) and
same plan (bridge on both: the work is equal, only the workers differ). Each run's wall time is the process's, from
start to exit; the CLI's own report splits it into start-up (its checks and Ray, then the pool: when each
start-up phase of the slowest group ended) and render.

Each run's CPU time is counted too: the whole machine's (/proc/stat) and the ranks' (ray::ShardRank processes,
sampled from /proc). The machine CPU of the 2-worker run over the cores is the least wall time any schedule of
that work could take on this machine: the most speedup over 1 worker that this much work allows.
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

from bench.machine import ProcessCPU, describe_machine
from bench.minute import DEMO_PROMPT, RESULTS, ROOT

RAY = str(ROOT / ".venv" / "bin" / "ray")
MINUTEREEL = str(ROOT / ".venv" / "bin" / "minutereel")


CASES = ((1, None), (2, None), (1, "bridge"))  # (workers, --mode); None: the default for that many workers


def _render(workers: int, mode: str | None, out: Path, env: dict) -> dict:
    command = [MINUTEREEL, "render", "--prompt", DEMO_PROMPT, "--duration", "60", "--workers", str(workers),
               "--out", str(out), *(["--mode", mode] if mode else [])]
    started = time.perf_counter()
    with ProcessCPU({"ranks": "ray::ShardRank"}) as cpu:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"render failed:\n{done.stderr[-3000:]}")
    render = float(re.search(r"in ([0-9.]+)s$", done.stdout.strip().splitlines()[-1]).group(1))
    startup = re.search(r"start-up: ([0-9.]+)s checks and Ray, ([0-9.]+)s pool \((.*)\)", done.stdout)
    planned = re.search(r"segments \((\w+), ", done.stdout).group(1)
    return {"workers": workers, "mode": planned, "mode_flag": mode is not None, "wall_s": round(wall, 2),
            "render_s": render, "checks_and_ray_s": float(startup.group(1)), "pool_s": float(startup.group(2)),
            "pool_phases": startup.group(3), "outside_engine_s": round(wall - render - float(startup.group(1))
                                                                       - float(startup.group(2)), 2),
            "machine_cpu_s": cpu.machine_s, "ranks_cpu_s": cpu.total("ranks")}


def _cpu_bound(rows: list[dict], one_worker_s: float) -> dict | None:
    """What the machine's CPU allows the best 2-worker run (the least CPU of them): its CPU seconds over the cores
    is the least wall time any schedule of that work needs, and the 1-worker command's best over that the most
    speedup. None without /proc."""
    measured = [r for r in rows if r["workers"] == 2 and r["machine_cpu_s"] is not None]
    if not measured:
        return None
    least = min(measured, key=lambda r: r["machine_cpu_s"])
    cores = os.cpu_count() or 1
    wall = least["machine_cpu_s"] / cores
    return {"machine_cpu_s": least["machine_cpu_s"], "ranks_cpu_s": least["ranks_cpu_s"], "cores": cores,
            "wall_s": round(wall, 1), "speedup": round(one_worker_s / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = tmp
        env["RAY_AUTH_MODE"] = "disabled"  # a private local cluster: no stale ~/.ray token in the way
        started = subprocess.run([RAY, "start", "--head", f"--num-cpus={os.cpu_count()}", "--port=0",
                                  "--include-dashboard=false", "--disable-usage-stats"],
                                 env=env, check=True, capture_output=True, text=True)
        try:
            env["RAY_ADDRESS"] = re.search(r"--address='([^']+)'", started.stdout).group(1)
            rows = []
            for run in range(args.runs):
                for workers, flag in CASES:
                    rows.append({"run": run, **_render(workers, flag, Path(tmp) / f"w{workers}.mp4", env)})
                    print(json.dumps(rows[-1]))
        finally:
            subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
    def best(workers: int, flag: bool) -> float:
        return min(r["wall_s"] for r in rows if r["workers"] == workers and r["mode_flag"] == flag)

    default, same_plan = best(1, False), best(1, True)
    two = best(2, False)
    speedup, same_speedup = round(default / two, 2), round(same_plan / two, 2)
    print(f"whole command, 60 s tiny video on a running local cluster, 2 workers {two:.1f}s against 1 worker: "
          f"default modes (chain) {default:.1f}s: {speedup}x; same plan (bridge) {same_plan:.1f}s: {same_speedup}x")
    bound = _cpu_bound(rows, default)
    if bound is not None:
        print(f"CPU bound: the 2-worker command used {bound['machine_cpu_s']:.1f} CPU s of this machine "
              f"({bound['ranks_cpu_s']:.1f} in the ranks): on {bound['cores']} cores no schedule finishes it in under "
              f"{bound['wall_s']:.1f}s, so it is at most {bound['speedup']}x the 1-worker command while the work stays")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "command", "command": f"python -m bench.command --runs {args.runs}",
              "machine": describe_machine(), "rows": rows,
              "best_wall_s": {"1 worker, default mode": default, "1 worker, bridge": same_plan, "2 workers": two},
              "speedup_default_modes": speedup, "speedup_same_plan": same_speedup, "cpu_bound": bound}
    (RESULTS / "command.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

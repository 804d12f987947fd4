"""Status over HTTP while a render's 1280x704 frames are joined and encoded: `GET /v1/videos/{id}` on the real
Serve app, against the old lock behaviour.

    python -m bench.http_latency

Starts a local Ray cluster and the real Serve app (orchestrator.serve, the tiny preset with its 65536-pixel API
cap lifted, 2 workers), submits a 4 s
1280x704 video (the tiny preset's nearest size to 720p: a multiple of 32) and asks, in a loop, for
the video every POLL_S seconds over HTTP, recording each answer's time and the job's state. Baseline: the old
behaviour, in which saving, stitching and encoding held the dispatcher lock every status call takes; it is not
reachable in the app any more, so it is measured as `bench.status_latency` measures it (`locked`, in process,
no HTTP hop: a lower bound on what HTTP would have answered), in the same run.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import ray
from ray import serve

from bench import status_latency
from bench.machine import describe_machine
from pipeline.config import default_cache_dir
from pipeline.testsrc import moving_pattern

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SIZE, SECONDS, POLL_S = "1280x704", 4, 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _summary(latencies: list[float]) -> dict:
    ms = np.array(latencies) * 1000
    return {"polls": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def measure_http(jobs: Path) -> dict:
    from orchestrator.serve import build_app

    # The tiny preset caps the API's sizes at 65536 pixels; a copy of it without the cap renders 1280x704.
    preset = jobs.parent / "tiny-720.yaml"
    text = (ROOT / "configs" / "presets" / "tiny.yaml").read_text()
    preset.write_text(re.sub(r"(?m)^max_area:.*$", "max_area: 901120", text))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    model = {"cache_dir": str(default_cache_dir()), "preset": str(preset)}
    serve.run(build_app({"jobs_root": str(jobs), "runner_name": "bench-runner", "parallel": {"workers": 2},
                         "model": model}), name="minutereel", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        while client.get("/healthz").status_code != 200:
            time.sleep(0.5)
        created = client.post("/v1/videos", json={"prompt": "a big yellow ball moving right on a blue background",
                                                  "seconds": SECONDS, "size": SIZE, "mode": "keyframes",
                                                  "model": str(preset)})
        assert created.status_code == 200, created.text
        video = created.json()
        samples = []  # (seconds, job state)
        started = time.perf_counter()
        while True:
            asked = time.perf_counter()
            answer = client.get(f"/v1/videos/{video['id']}").json()
            samples.append((time.perf_counter() - asked, answer["render"]["state"]))
            if answer["status"] not in ("queued", "in_progress"):
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
        assert answer["status"] == "completed", answer
    finally:
        client.close()
        serve.shutdown()
        ray.kill(ray.get_actor("bench-runner"))
    stitching = [s for s, state in samples if state == "stitching"]
    return {"mode": "http, pieces (the app as it is)", "size": SIZE, "seconds": SECONDS, "wall_s": round(wall, 2),
            **_summary([s for s, _ in samples]),
            "while_stitching": _summary(stitching) if stitching else None}


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure_http(Path(tmp) / "jobs"))
        print(json.dumps(rows[-1]))
        segment = moving_pattern(0, 33, status_latency.HEIGHT, status_latency.WIDTH)
        rows.append(status_latency._measure("locked", segment, Path(tmp)))  # the same measurement
        rows[-1]["mode"] = "locked (old behaviour), in process"
        print(json.dumps(rows[-1]))
    ray.shutdown()
    print(f"GET /v1/videos/ID p99 {rows[0]['p99_ms']} ms over HTTP while rendering and joining "
          f"{SIZE} (max {rows[0]['max_ms']} ms); the old lock behaviour: p99 {rows[1]['p99_ms']} ms in process")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "http_latency", "command": "python -m bench.http_latency",
              "machine": describe_machine(), "poll_s": POLL_S, "rows": rows}
    (RESULTS / "http_latency.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

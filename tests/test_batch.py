"""`ray job submit ... -- python -m orchestrator.batch --spec FILE` on the session's cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _submit(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", "submit", "--address", os.environ["RAY_JOB_ADDRESS"], "--working-dir", ".", "--",
         "python", "-m", "orchestrator.batch", "--spec", str(spec)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


def test_ray_job_submit_renders_every_entry_then_skips_them(ray_cluster, tiny_cache, tmp_path, capsys):
    jobs = tmp_path / "jobs"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "jobs_root": str(jobs),
        "engine": {"model": {"cache_dir": str(tiny_cache)}, "parallel": {"workers": 2}},
        "renders": [
            {"id": "fox", "prompt": "a fox", "duration_s": 3.0, "mode": "chain"},
            {"id": "story", "storyboard": [{"at_s": 0, "prompt": "sea"}, {"at_s": 2, "prompt": "storm"}],
             "duration_s": 4.0, "mode": "bridge", "segment_frames": 33},
        ],
    }))
    first = _submit(spec)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 done, 0 failed" in first.stdout
    for entry, frames in (("fox", 48), ("story", 64)):
        assert read_video(jobs / entry / "output.mp4")[1].frames == frames
        history = json.loads((jobs / entry / "state.json").read_text())["history"]
        assert history == ["queued", "planning", "rendering", "stitching", "done"]  # as the CLI's and server's
    made = {p: p.stat().st_mtime_ns for p in jobs.rglob("*.npy")}

    # The same spec again, run as the entrypoint runs (in this process: `ray job submit` itself is shown above).
    from orchestrator.batch import main

    assert main(["--spec", str(spec)]) == 0
    second = capsys.readouterr().out
    assert second.count("skipped") == 2 and "2 done, 0 failed" in second
    assert "no worker pool started" in second  # a finished batch claims no devices
    assert {p: p.stat().st_mtime_ns for p in jobs.rglob("*.npy")} == made  # nothing rendered again


def test_failed_entry_makes_the_batch_fail(ray_cluster, tiny_cache, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "jobs_root": str(tmp_path / "jobs"), "engine": {"model": {"cache_dir": str(tiny_cache)}},
        "renders": [{"id": "bad", "prompt": "a fox", "width": 100}],
    }))
    from orchestrator.batch import main

    assert main(["--spec", str(spec)]) == 1

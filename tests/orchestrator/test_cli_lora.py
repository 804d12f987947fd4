"""`minutereel render --lora` through the real CLI and Ray on the embedded model: a LoRA in the original Wan key
layout changes the video and names the job's weights; a broken one, or a request the planner refuses, stops the
command with one line before a job directory or Ray exists."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lora_files import write_wan_lora

from pipeline.video_io import read_video

MINUTEREEL = str(Path(sys.executable).with_name("minutereel"))
FLAGS = ["--prompt", "a red ball moving right on a blue background", "--duration", "1", "--mode", "chain",
         "--workers", "1"]


def _run(env, *args, timeout=300):
    return subprocess.run([MINUTEREEL, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _start(env, *args):
    return subprocess.Popen([MINUTEREEL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def env(ray_cluster, tiny_cache):
    return {**os.environ, "RAY_ADDRESS": ray_cluster, "MINUTEREEL_CACHE": str(tiny_cache)}


def test_a_wan_layout_lora_changes_the_video_and_the_jobs_weights(env, tmp_path):
    lora = write_wan_lora(tmp_path / "lightx2v_style.safetensors", std=0.15)
    job = tmp_path / "job"
    # Both at once, one worker each (the cluster's two CPU slots): their pools start together.
    plain = _start(env, "render", *FLAGS, "--out", str(tmp_path / "plain.mp4"))
    styled = _start(env, "render", *FLAGS, "--lora", f"{lora}:0.8", "--job-dir", str(job))
    errors = [command.communicate(timeout=300)[1] for command in (plain, styled)]  # both end before either is judged
    for command, err in zip((plain, styled), errors, strict=True):
        assert command.returncode == 0, err[-3000:]

    base, changed = read_video(tmp_path / "plain.mp4")[0], read_video(job / "output.mp4")[0]
    assert base.shape == changed.shape == (16, 128, 128, 3)
    difference = np.abs(base.astype(int) - changed.astype(int)).mean(axis=(1, 2, 3))
    # The same command renders identical frames (tests/test_render.py); the LoRA moves every one of them.
    assert difference.min() > 0.5 and difference.mean() > 2, difference
    assert json.loads((job / "plan.json").read_text())["weights"].endswith(f" loras={lora}*0.8")

    # The same job under other weights (no LoRA, or another scale) is refused before any model loads.
    for other in ([], ["--lora", f"{lora}:0.5"]):
        resumed = _run(env, "render", *FLAGS, *other, "--job-dir", str(job), "--resume", timeout=60)
        assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
        assert "loras" in resumed.stderr and "different request" in resumed.stderr, resumed.stderr


def test_a_lora_for_another_model_exits_2_with_one_line_and_writes_nothing(tiny_cache, tmp_path):
    lora = write_wan_lora(tmp_path / "deeper.safetensors", blocks=7)
    job = tmp_path / "job"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # it stops before Ray would start
    env["MINUTEREEL_CACHE"] = str(tiny_cache)
    done = _run(env, "render", *FLAGS, "--lora", str(lora), "--job-dir", str(job), timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"minutereel: LoRA {lora}: blocks.6.attn1.to_q is not a layer of the WanTransformer3DModel transformer"]
    assert not job.exists()


@pytest.mark.parametrize(("content", "reason"), [
    (None, "no such file"),
    (b"\x00" * 64, "not a readable .safetensors file"),
])
def test_a_missing_or_unreadable_lora_exits_2_naming_it(tiny_cache, tmp_path, monkeypatch, capsys, content, reason):
    from orchestrator.cli import main

    monkeypatch.setenv("MINUTEREEL_CACHE", str(tiny_cache))
    lora = tmp_path / "broken.safetensors"
    if content is not None:
        lora.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["render", *FLAGS, "--lora", str(lora), "--out", str(out / "video.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minutereel: LoRA {lora}: {reason}") and err.count("\n") == 1
    assert list(out.iterdir()) == []


def test_a_request_the_planner_refuses_fails_before_a_job_or_ray(tiny_cache, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("MINUTEREEL_CACHE", str(tiny_cache))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing listens there: reaching Ray would fail otherwise
    job = tmp_path / "job"
    assert main(["render", *FLAGS, "--segment-frames", "21", "--overlap", "8", "--job-dir", str(job)]) == 2
    assert "overlap_frames 8 must be under a quarter of segment_frames 21" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

"""Real presets end to end on CPU (`pytest -m real_architecture`): each preset's real component classes at
reduced size (tests/real_architectures.py), saved as local checkpoints, named by a preset file, with synthetic
LoRAs in the original Wan key layout, rendered through `minutereel render` with int8 and SP degree 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_architectures import wan21_480p_4step_preset_file, wan22_4step_preset_file

from pipeline.video_io import read_video

MINUTEREEL = str(Path(sys.executable).with_name("minutereel"))

pytestmark = pytest.mark.real_architecture


def _render(ray_cluster, preset: Path, job: Path, *flags: str) -> None:
    """64x64 segments of 17 frames overlapping by 4, int8, SP degree 2, one worker."""
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MINUTEREEL_CACHE": str(job.parent / "cache")}
    done = subprocess.run(
        [MINUTEREEL, "render", "--preset", str(preset), "--prompt", "a fox in snow", "--width", "64", "--height", "64",
         "--segment-frames", "17", "--overlap", "4", "--workers", "1", "--sp-degree", "2", "--quantize", "int8",
         "--job-dir", str(job), *flags],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_wan22_a14b_4step_renders_bridge_mode_with_both_experts_int8_and_sp2(ray_cluster, tmp_path):
    job = tmp_path / "job"
    _render(ray_cluster, wan22_4step_preset_file(tmp_path), job, "--duration", "2.5", "--mode", "bridge")
    frames, info = read_video(job / "output.mp4")
    assert (info.frames, info.width, info.height, info.fps) == (40, 64, 64, 16)
    plan = json.loads((job / "plan.json").read_text())
    assert (plan["steps"], plan["guidance"], plan["keyframe_steps"], plan["keyframe_guidance"]) == (4, 1.0, 4, 0.0)
    assert [s["last"] is not None for s in plan["segments"]] == [False, True, False]  # a first-last-frame bridge
    assert plan["weights"].endswith(f"quantize=int8 loras={tmp_path / 'high_noise.safetensors'}*1,"
                                    f"{tmp_path / 'low_noise.safetensors'}*1>transformer_2")
    assert frames.std() > 1  # a picture, not a constant


def test_wan21_i2v_480p_4step_renders_chain_mode_with_clip_int8_and_sp2(ray_cluster, tmp_path):
    job = tmp_path / "job"
    _render(ray_cluster, wan21_480p_4step_preset_file(tmp_path), job, "--duration", "1.5")
    frames, info = read_video(job / "output.mp4")
    assert (info.frames, info.width, info.height) == (24, 64, 64) and frames.std() > 1
    plan = json.loads((job / "plan.json").read_text())
    assert (plan["mode"], plan["steps"], plan["guidance"], len(plan["segments"])) == ("chain", 4, 1.0, 2)
    assert plan["weights"].endswith(f"quantize=int8 loras={tmp_path / 'i2v_4step.safetensors'}*1")

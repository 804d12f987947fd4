"""Real presets end to end on CPU (`pytest -m real_architecture`): each preset's real component classes at
reduced size (tests/real_architectures.py), saved as local checkpoints and named by a copy of the preset's YAML,
with synthetic LoRAs in their family's original key layout (the preset's own, and one more through --lora), rendered
through `minutereel render` with int8 and SP degree 2 (1 for a preset whose transformer diffusers cannot shard,
which refuses 2): the CPU form of the GPU path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_architectures import I2V_BUILDERS, preset_file, synthetic_lora

from pipeline.presets import load_preset
from pipeline.video_io import read_video

MINUTEREEL = str(Path(sys.executable).with_name("minutereel"))

pytestmark = pytest.mark.real_architecture


@pytest.mark.parametrize("name", sorted(I2V_BUILDERS))
def test_real_preset_renders_two_or_three_segments_with_loras_int8_and_sp(ray_cluster, tmp_path, name):
    preset = load_preset(name)
    sp_degree = 1 if preset.sp_backend == "none" else 2
    mode = "keyframes" if preset.requires_last_frame else "bridge" if preset.supports_last_frame else "chain"
    lasts = {"keyframes": [True] * 3, "bridge": [False, True, False]}.get(mode)  # chain: none, 2 or more segments
    user_lora = synthetic_lora(tmp_path, "user", seed=9, preset=name)
    width = 2 * preset.spatial_multiple if preset.spatial_multiple >= 32 else 64
    job = tmp_path / "job"
    duration = 1.5 if mode == "chain" else 2.5
    flags = ["--duration", str(duration), "--mode", mode,
             "--width", str(width), "--height", str(width), "--segment-frames", "17", "--overlap", "4",
             "--steps", str(min(preset.steps, 2)) if preset.steps > 4 else str(preset.steps),
             "--workers", "1", "--quantize", "int8", "--lora", f"{user_lora}:0.5"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MINUTEREEL_CACHE": str(tmp_path / "cache")}
    render = [MINUTEREEL, "render", "--preset", str(preset_file(name, tmp_path)), "--prompt", "a fox in snow", *flags,
              "--job-dir", str(job)]
    if sp_degree == 1:  # refused before a job directory or Ray exists, in one line
        refused = subprocess.run([*render, "--sp-degree", "2"], env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "renders at --sp-degree 1 only" in refused.stderr, refused.stderr[-3000:]
        assert len(refused.stderr.strip().splitlines()) == 1 and not job.exists()
    done = subprocess.run([*render, "--sp-degree", str(sp_degree)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    frames, info = read_video(job / "output.mp4")
    assert (info.frames, info.width, info.height) == (round(duration * preset.native_fps), width, width)
    assert frames.std() > 1
    plan = json.loads((job / "plan.json").read_text())
    has_last = [s["last"] is not None for s in plan["segments"]]
    assert has_last == lasts if lasts else len(has_last) >= 2 and not any(has_last)
    assert (plan["guidance"], plan["keyframe_steps"], plan["keyframe_guidance"]) == (preset.guidance, 4, 0.0)
    fused = [f"{tmp_path / (lora.target + '_lora.safetensors')}*1" + ("" if lora.target == "transformer" else
                                                                       ">transformer_2") for lora in preset.loras]
    assert plan["weights"].endswith("quantize=int8 loras=" + ",".join([*fused, f"{user_lora}*0.5"]))

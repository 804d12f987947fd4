"""`minutereel presets`, and `minutereel render` on a real preset whose checkpoints are not on this machine."""

import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.cli import main
from pipeline.presets import preset_names

MINUTEREEL = str(Path(sys.executable).with_name("minutereel"))


def test_presets_lists_modes_frame_rule_and_memory_per_sp_degree(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        assert f"\n{name}: " in f"\n{out}"
    assert "wan2.1-flf2v-720p" in out and "modes chain, keyframes, bridge; 16 fps native" in out
    assert "frames % 4 == 1, at most 129" in out  # HunyuanVideo-I2V
    assert out.count("at SP degree 1 / 2 / 4 / 8:") == len(preset_names())
    assert out.count("    bfloat16: ") == len(preset_names()) - 1 and out.count("        int8: ") == len(preset_names())


def test_render_without_the_checkpoint_says_how_to_get_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), MINUTEREEL_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "fox.mp4"
    started = time.perf_counter()
    done = subprocess.run([MINUTEREEL, "render", "--preset", "wan2.1-i2v-480p", "--prompt", "a fox", "--duration", "5",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    message = done.stderr
    assert message.startswith("minutereel: preset 'wan2.1-i2v-480p' cannot load its checkpoints:")
    assert "i2v_model Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: not in the Hugging Face cache" in message
    assert "t2i_model black-forest-labs/FLUX.1-schnell" in message and "HF_HUB_OFFLINE" in message
    assert "hf download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers" in message
    assert "set i2v_model and t2i_model to the directory's absolute path in" in message
    assert message.rstrip().endswith("configs/presets/wan2.1-i2v-480p.yaml")
    assert not out.exists() and not Path(f"{out}.partial").exists()
    assert time.perf_counter() - started < 60  # failed before Ray started


def test_presets_json_has_every_field_and_the_distilled_presets(capsys, tmp_path):
    import json

    import yaml

    from pipeline.presets import load_preset

    studio = tmp_path / "studio.yaml"
    studio.write_text(yaml.safe_dump({**load_preset("tiny").model_dump(mode="json"), "name": "studio"}))
    assert main(["presets", "--json", str(studio)]) == 0
    presets = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert set(presets) == {*preset_names(), "studio"}
    for fields in presets.values():
        assert {"steps", "guidance", "modes", "supports_last_frame", "loras", "native_fps", "scheduler"} <= set(fields)
        assert set(fields["memory_per_rank_bytes"]["int8"]) == {"1", "2", "4", "8"}
    fast = [p for name, p in presets.items() if name not in ("tiny", "studio")
            and p["steps"] <= 4 and p["guidance"] == 1.0 and p["scheduler"] == "few_step_euler" and p["loras"]]
    assert {p["name"] for p in fast} >= {"wan2.1-i2v-480p-4step", "wan2.2-i2v-a14b-4step"}
    flagship = presets["wan2.2-i2v-a14b-4step"]
    assert flagship["supports_last_frame"] and flagship["modes"] == ["chain", "keyframes", "bridge"]
    assert [lora["target"] for lora in flagship["loras"]] == ["transformer", "transformer_2"]
    assert flagship["memory_per_rank_bytes"]["int8"]["1"] < flagship["memory_per_rank_bytes"]["bfloat16"]["1"]


def test_plan_takes_a_preset_yaml_path(capsys, tmp_path, monkeypatch):
    import json

    import yaml

    from pipeline.presets import load_preset

    fields = {**load_preset("tiny").model_dump(mode="json"), "name": "studio", "steps": 3}
    (tmp_path / "studio.yaml").write_text(yaml.safe_dump(fields))
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--preset", "studio.yaml", "--prompt", "a fox", "--duration", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["preset"], plan["steps"]) == ("studio", 3)
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({**fields, "steps": 0}))
    assert main(["plan", "--preset", "broken.yaml", "--prompt", "a fox"]) == 2
    assert capsys.readouterr().err.strip() == (f"minutereel: preset file {tmp_path / 'broken.yaml'}: steps: "
                                               "Input should be greater than or equal to 1")

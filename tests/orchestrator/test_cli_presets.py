"""`minutereel presets`: every preset with its modes, frame rule and GPU memory per SP degree."""

from orchestrator.cli import main
from pipeline.presets import preset_names


def test_presets_lists_modes_frame_rule_and_memory_per_sp_degree(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        assert f"\n{name}: " in f"\n{out}"
    assert "wan2.1-flf2v-720p" in out and "modes chain, keyframes, bridge; 16 fps native" in out
    assert "frames % 4 == 1, at most 129" in out  # HunyuanVideo-I2V
    assert out.count("at SP degree 1 / 2 / 4 / 8:") == len(preset_names())
    assert out.count("    bfloat16: ") == len(preset_names()) - 1 and out.count("        int8: ") == len(preset_names())

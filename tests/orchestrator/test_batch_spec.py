"""Batch specs name LoRAs like the CLI: on the engine (what the pool loads) and, optionally, per entry."""

from orchestrator.batch import _entry, load_spec
from pipeline.presets import LoraSpec


def test_a_spec_names_the_engines_loras_and_entries_may_repeat_them(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"jobs_root: {tmp_path / 'jobs'}\n"
        "engine:\n"
        "  model: {preset: tiny, loras: ['/loras/style.safetensors:0.8', {source: owner/name, target: transformer}]}\n"
        "renders:\n"
        "  - {id: plain, prompt: a fox}\n"
        "  - {id: styled, prompt: a fox, loras: ['/loras/style.safetensors:0.8', 'owner/name']}\n"
    )
    loaded = load_spec(spec)
    expected = (LoraSpec(source="/loras/style.safetensors", scale=0.8), LoraSpec(source="owner/name"))
    assert loaded.engine.model.loras == expected
    (plain_id, plain), (styled_id, styled) = (_entry(raw) for raw in loaded.renders)
    assert (plain_id, plain.loras) == ("plain", None)  # the engine's, filled in when planned
    assert (styled_id, styled.loras) == ("styled", expected)

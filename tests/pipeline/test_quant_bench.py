"""bench.quant at reduced size: the same code path as `python -m bench.quant`, in seconds."""

import pytest

from bench.quant import REDUCED, TI2V_5B, build_transformer, measure
from pipeline.presets import load_preset


@pytest.mark.slow
def test_reduced_bench_quant_halves_weights_and_keeps_the_output():
    result = measure("reduced", steps=1)
    bf16, int8 = result["runs"]
    assert bf16["parameters"] == int8["parameters"] > 10_000_000
    assert result["int8_vs_bf16"]["weight_bytes"] <= 0.55
    assert result["int8_vs_bf16"]["output_relative_l2_error"] < 0.05
    assert bf16["best_step_s"] > 0 and int8["best_step_s"] > 0


def test_benchmarked_architecture_is_the_presets_transformer():
    import torch

    with torch.device("meta"):
        model = build_transformer(TI2V_5B)
    assert sum(p.numel() for p in model.parameters()) == load_preset("wan2.2-ti2v-5b").size.i2v_params["transformer"]
    assert {k: v for k, v in REDUCED.items() if k not in ("num_attention_heads", "num_layers", "ffn_dim")} == {
        k: v for k, v in TI2V_5B.items() if k not in ("num_attention_heads", "num_layers", "ffn_dim")}

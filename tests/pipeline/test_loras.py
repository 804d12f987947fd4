"""LoRAs on the tiny Wan transformer: both file layouts, the checks before loading, fusing, and the order with int8."""

import copy
from pathlib import Path

import pytest
import torch
from diffusers import WanImageToVideoPipeline
from lora_files import write_diffusers_lora, write_wan_lora

from pipeline.checkpoints import checkpoint_paths
from pipeline.loras import LoraUnavailable, check_loras, fuse_loras
from pipeline.parallel import probe_transformer
from pipeline.presets import LoraSpec, load_preset, weights_id
from pipeline.quantize import quantize_int8


@pytest.fixture(scope="module")
def i2v_dir(tiny_cache):
    return checkpoint_paths(load_preset("tiny"), tiny_cache)[0]


@pytest.fixture(scope="module")
def loaded(i2v_dir):
    return WanImageToVideoPipeline.from_pretrained(i2v_dir)


@pytest.fixture
def fresh(loaded):
    """A fresh copy of the tiny I2V pipeline (copying is much cheaper than loading)."""
    return lambda: copy.deepcopy(loaded)


def _probe(pipe) -> torch.Tensor:
    return probe_transformer(pipe.transformer, 3, latent_frames=6, latent_height=16, latent_width=16)


def _lora(path: Path, **fields) -> LoraSpec:
    return LoraSpec(source=str(path), **fields)


def test_wan_layout_lora_fuses_to_what_diffusers_runs_unfused(fresh, tmp_path):
    wan = write_wan_lora(tmp_path / "wan.safetensors")
    pipe = fresh()
    base = _probe(pipe)
    pipe.load_lora_weights(str(tmp_path), weight_name=wan.name, adapter_name="reference")
    unfused = _probe(pipe)
    pipe.unload_lora_weights()
    fuse_loras(pipe, (_lora(wan),))
    fused = _probe(pipe)
    assert (unfused - base).abs().max() > 0.1  # the LoRA does something
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-4)
    assert all(type(m) is torch.nn.Linear for m in pipe.transformer.blocks[0].attn1.modules()
               if isinstance(m, torch.nn.Linear))  # no PEFT layers left for quantization to trip on


def test_both_layouts_and_scales_fuse_alike(fresh, tmp_path):
    def fused(*loras):
        pipe = fresh()
        fuse_loras(pipe, loras)
        return _probe(pipe)

    wan, peft = write_wan_lora(tmp_path / "wan.safetensors"), write_diffusers_lora(tmp_path / "peft.safetensors")
    torch.testing.assert_close(fused(_lora(wan)), fused(_lora(peft)), rtol=0, atol=1e-5)
    torch.testing.assert_close(fused(_lora(wan, scale=0.0)), fused(), rtol=0, atol=1e-6)
    half_twice = fused(_lora(wan, scale=0.5), _lora(wan, scale=0.5))
    torch.testing.assert_close(half_twice, fused(_lora(wan)), rtol=0, atol=1e-4)


def test_lora_then_int8_matches_the_fused_float_model(fresh, tmp_path):
    wan = write_wan_lora(tmp_path / "wan.safetensors")
    pipe = fresh()
    base = _probe(pipe)
    fuse_loras(pipe, (_lora(wan),))
    fused = _probe(pipe)
    quantize_int8(pipe, ("transformer",))
    quantized = _probe(pipe)
    # int8 rounding moves the output far less than the LoRA does: the quantized weights are the fused ones.
    assert (quantized - fused).abs().mean() < 0.1 * (fused - base).abs().mean()


def test_fitting_loras_pass_the_check_in_both_layouts(i2v_dir, tmp_path):
    check_loras((_lora(write_wan_lora(tmp_path / "wan.safetensors")),
                 _lora(write_diffusers_lora(tmp_path / "peft.safetensors"))), "WanImageToVideoPipeline", i2v_dir)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_diffusers_lora(folder / "pytorch_lora_weights.safetensors")
    check_loras((_lora(folder),), "WanImageToVideoPipeline", i2v_dir)  # a directory: diffusers' default file name


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p, "no such file"),
    (lambda p: p.write_bytes(b"not a safetensors file") and p, "not a readable .safetensors file"),
    (lambda p: write_wan_lora(p, blocks=7), "blocks.6.attn1.to_q is not a layer of the WanTransformer3DModel"),
    (lambda p: write_wan_lora(p, dim=64, ffn=256), "blocks.0.attn1.to_q is 64 -> 64 at rank 4/4, but the "
                                                   "WanTransformer3DModel transformer has 128 -> 128 there"),
])
def test_a_broken_lora_is_one_line_naming_the_file_and_the_reason(i2v_dir, tmp_path, make, reason):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(LoraUnavailable) as err:
        check_loras((_lora(path),), "WanImageToVideoPipeline", i2v_dir)
    message = str(err.value)
    assert message.startswith(f"LoRA {path}: ") and reason in message and "\n" not in message


def test_a_lora_for_a_second_expert_the_checkpoint_lacks_is_refused(i2v_dir, tmp_path):
    lora = _lora(write_wan_lora(tmp_path / "wan.safetensors"), target="transformer_2")
    with pytest.raises(LoraUnavailable, match=r"targets transformer_2, which .* does not have"):
        check_loras((lora,), "WanImageToVideoPipeline", i2v_dir)


def test_lora_flag_parses_paths_hub_files_and_scales(tmp_path):
    (tmp_path / "style.safetensors").touch()
    assert LoraSpec.parse("style.safetensors:0.75", cwd=tmp_path) == LoraSpec(
        source=str(tmp_path / "style.safetensors"), scale=0.75)
    assert LoraSpec.parse("lightx2v/Wan2.1-Distill-Loras/wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors",
                          cwd=tmp_path) == LoraSpec(source="lightx2v/Wan2.1-Distill-Loras",
                                                    weight_name="wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors")
    assert LoraSpec.parse("owner/name:-1", cwd=tmp_path) == LoraSpec(source="owner/name", scale=-1.0)
    assert LoraSpec.parse("missing.safetensors", cwd=tmp_path).source == str(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="neither a hub id"):
        LoraSpec(source="relative/dir/file.safetensors")


def test_loras_are_part_of_the_weights_identity():
    tiny = load_preset("tiny")
    plain = weights_id(tiny, "none")
    one = weights_id(tiny, "none", (LoraSpec(source="/l/a.safetensors"),))
    assert one == f"{plain} loras=/l/a.safetensors*1"
    assert weights_id(tiny, "none", (LoraSpec(source="/l/a.safetensors", scale=0.5),)) != one
    distilled = load_preset("wan2.2-i2v-a14b-4step")
    assert weights_id(distilled, "int8").endswith(
        "loras=lightx2v/Wan2.2-Distill-Loras/wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors*1,"
        "lightx2v/Wan2.2-Distill-Loras/wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors*1"
        ">transformer_2")


def test_a_preset_file_with_a_lora_and_the_few_step_sampler_renders(tiny_cache, fresh, tmp_path):
    """A studio's preset YAML: the tiny checkpoints with a LoRA and the 4-step sampler, loaded as the ranks do."""
    import numpy as np
    import yaml

    from pipeline.config import ModelConfig
    from pipeline.generate import SegmentGenerator, SegmentRequest
    from pipeline.schedulers import FewStepFlowMatchEulerScheduler

    lora = write_wan_lora(tmp_path / "wan.safetensors")
    fields = {**load_preset("tiny").model_dump(mode="json"), "name": "studio", "scheduler": "few_step_euler",
              "flow_shift": 5.0, "loras": [{"source": str(lora), "scale": 0.5}]}
    (tmp_path / "studio.yaml").write_text(yaml.safe_dump(fields))
    config = ModelConfig(preset=str(tmp_path / "studio.yaml"), quantize="int8", cache_dir=tiny_cache)
    generator = SegmentGenerator(config, torch.device("cpu"), keyframes=False)
    plain = fresh()
    fuse_loras(plain, (_lora(lora, scale=0.5),))
    quantize_int8(plain, ("transformer",))
    torch.testing.assert_close(_probe(generator.i2v), _probe(plain), rtol=0, atol=1e-6)  # fused, then int8
    assert isinstance(generator.i2v.scheduler, FewStepFlowMatchEulerScheduler)
    first = np.zeros((128, 128, 3), np.uint8)
    frames = generator.segment(SegmentRequest(prompt="a red ball", seed=1, num_frames=9, width=128, height=128,
                                              first=first, steps=4))
    assert frames.shape == (9, 128, 128, 3)
    torch.testing.assert_close(generator.i2v.scheduler.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))


def test_a_hub_lora_that_is_not_cached_offline_says_how_to_get_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from pipeline.loras import lora_file

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    lora = LoraSpec(source="lightx2v/Wan2.1-Distill-Loras",
                    weight_name="wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors")
    with pytest.raises(LoraUnavailable) as err:
        lora_file(lora)
    message = str(err.value)
    assert message.startswith(f"LoRA {lora.source}/{lora.weight_name}: not in the Hugging Face cache")
    assert "\n" not in message
    assert message.endswith(f"hf download {lora.source} {lora.weight_name}")

"""Presets: schema, pipeline classes, parameter counts, the memory estimate, checkpoints and image keyframes."""

import inspect
import math

import diffusers
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from pipeline.checkpoints import CheckpointUnavailable, checkpoint_paths, locate_checkpoint
from pipeline.generate import render_keyframe
from pipeline.memory import SP_DEGREES, estimate_memory, segment_tokens, weight_bytes
from pipeline.presets import Preset, load_preset, preset_names
from pipeline.tiny import build_tiny_pipelines

REAL = [name for name in preset_names() if name != "tiny"]

WAN = dict(attention_head_dim=128, cross_attn_norm=True, eps=1e-6, freq_dim=256, patch_size=(1, 2, 2),
           qk_norm="rms_norm_across_heads", text_dim=4096)
WAN21_I2V = dict(WAN, image_dim=1280, added_kv_proj_dim=5120, ffn_dim=13824, in_channels=36, num_attention_heads=40,
                 num_layers=40, out_channels=16)


def _architectures():
    """Each component of the real presets as (class, config), written down from the checkpoints' configs:
    diffusers scripts/convert_wan_to_diffusers.py and convert_hunyuan_video_to_diffusers.py, and the
    config.json of the text and image encoders (google/umt5-xxl, laion CLIP ViT-H/14, xtuner
    llava-llama-3-8b-v1_1, openai clip-vit-large-patch14, google t5-v1_1-xxl)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLHunyuanVideo,
        AutoencoderKLWan,
        FluxTransformer2DModel,
        HunyuanVideoTransformer3DModel,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    clip_l = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
    llava = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, patch_size=14, image_size=336, projection_dim=768),
        text_config=LlamaConfig(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
        image_token_index=128257, projector_hidden_act="gelu",
    )
    return {
        "wan21_i2v": (WanTransformer3DModel, WAN21_I2V),
        "wan21_flf2v": (WanTransformer3DModel, dict(WAN21_I2V, rope_max_seq_len=1024, pos_embed_seq_len=2 * 257)),
        "wan22_i2v_expert": (WanTransformer3DModel, dict(WAN, ffn_dim=13824, in_channels=36, num_attention_heads=40,
                                                          num_layers=40, out_channels=16)),
        "wan22_ti2v_5b": (WanTransformer3DModel, dict(WAN, ffn_dim=14336, in_channels=48, num_attention_heads=24,
                                                       num_layers=30, out_channels=48)),
        "wan21_vae": (AutoencoderKLWan, {}),
        "wan22_vae": (AutoencoderKLWan, dict(base_dim=160, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                                             decoder_base_dim=256, scale_factor_temporal=4, scale_factor_spatial=16,
                                             patch_size=2, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)),
        "umt5_xxl": (UMT5EncoderModel, UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                                  num_heads=64, feed_forward_proj="gated-gelu",
                                                  tie_word_embeddings=False)),
        "clip_vit_h14": (CLIPVisionModel, CLIPVisionConfig(hidden_size=1280, intermediate_size=5120,
                                                           num_hidden_layers=32, num_attention_heads=16, patch_size=14,
                                                           image_size=224, projection_dim=1024)),
        "hunyuan_i2v": (HunyuanVideoTransformer3DModel, dict(
            in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
            num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
            qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
            rope_theta=256.0, rope_axes_dim=(16, 56, 56), image_condition_type="token_replace")),
        "hunyuan_vae": (AutoencoderKLHunyuanVideo, {}),
        "llava_llama3_8b": (LlavaForConditionalGeneration, llava),
        "clip_l_text": (CLIPTextModel, clip_l),
        "flux_schnell": (FluxTransformer2DModel, dict(guidance_embeds=False)),
        "flux_vae": (AutoencoderKL, dict(latent_channels=16, block_out_channels=(128, 256, 512, 512),
                                         down_block_types=["DownEncoderBlock2D"] * 4,
                                         up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                                         use_quant_conv=False, use_post_quant_conv=False)),
        "t5_xxl": (T5EncoderModel, T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                            num_heads=64, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    }


FLUX = {"transformer": "flux_schnell", "text_encoder": "clip_l_text", "text_encoder_2": "t5_xxl", "vae": "flux_vae"}
COMPONENTS = {  # preset -> (I2V component -> architecture, T2I component -> architecture)
    "wan2.1-i2v-480p": ({"transformer": "wan21_i2v", "text_encoder": "umt5_xxl", "image_encoder": "clip_vit_h14",
                         "vae": "wan21_vae"}, FLUX),
    "wan2.1-i2v-720p": ({"transformer": "wan21_i2v", "text_encoder": "umt5_xxl", "image_encoder": "clip_vit_h14",
                         "vae": "wan21_vae"}, FLUX),
    "wan2.1-flf2v-720p": ({"transformer": "wan21_flf2v", "text_encoder": "umt5_xxl", "image_encoder": "clip_vit_h14",
                           "vae": "wan21_vae"}, FLUX),
    "wan2.1-i2v-480p-4step": ({"transformer": "wan21_i2v", "text_encoder": "umt5_xxl",
                               "image_encoder": "clip_vit_h14", "vae": "wan21_vae"}, FLUX),
    "wan2.2-i2v-a14b-4step": ({"transformer": "wan22_i2v_expert", "transformer_2": "wan22_i2v_expert",
                               "text_encoder": "umt5_xxl", "vae": "wan21_vae"}, FLUX),
    "wan2.2-i2v-a14b": ({"transformer": "wan22_i2v_expert", "transformer_2": "wan22_i2v_expert",
                         "text_encoder": "umt5_xxl", "vae": "wan21_vae"}, FLUX),
    "wan2.2-ti2v-5b": ({"transformer": "wan22_ti2v_5b", "text_encoder": "umt5_xxl", "vae": "wan22_vae"}, FLUX),
    "hunyuanvideo-i2v": ({"transformer": "hunyuan_i2v", "text_encoder": "llava_llama3_8b",
                          "text_encoder_2": "clip_l_text", "vae": "hunyuan_vae"}, FLUX),
}


@pytest.fixture(scope="module")
def parameter_counts():
    """Parameters of every architecture, counted on the meta device (no weights allocated)."""
    counts = {}
    with torch.device("meta"):
        for name, (cls, config) in _architectures().items():
            module = cls(config) if not isinstance(config, dict) else cls(**config)
            counts[name] = sum(p.numel() for p in module.parameters())
    return counts


@pytest.mark.parametrize("name", preset_names())
def test_preset_validates_and_names_installed_pipelines(name):
    preset = load_preset(name)
    assert Preset.model_validate(preset.model_dump()) == preset
    for cls_name, components in ((preset.i2v_pipeline, preset.size.i2v_params),
                                 (preset.t2i_pipeline, preset.size.t2i_params)):
        cls = getattr(diffusers, cls_name, None)
        assert cls is not None and issubclass(cls, diffusers.DiffusionPipeline), cls_name
        accepted = set(inspect.signature(cls.__init__).parameters)
        assert set(components) <= accepted, f"{cls_name} has no component {set(components) - accepted}"
    assert set(preset.t2i_shares) <= set(inspect.signature(getattr(diffusers, preset.i2v_pipeline).__init__).parameters)


@pytest.mark.parametrize("name", preset_names())
def test_preset_plans_a_minute_in_every_mode(name):
    preset = load_preset(name)
    for mode in preset.modes:
        plan = plan_render(RenderRequest(prompt="a fox", preset=name, mode=mode), preset)
        assert (plan.width, plan.height) == (preset.default_width, preset.default_height)
        assert (plan.fps, plan.total_frames) == (preset.native_fps, 60 * preset.native_fps)
        assert all(preset.is_valid_length(s.num_frames) and s.num_frames <= preset.max_frames for s in plan.segments)


@pytest.mark.parametrize("name", REAL)
def test_parameter_counts_match_the_architectures(name, parameter_counts):
    preset = load_preset(name)
    i2v, t2i = COMPONENTS[name]
    assert {k: parameter_counts[v] for k, v in i2v.items()} == preset.size.i2v_params
    assert {k: parameter_counts[v] for k, v in t2i.items()} == preset.size.t2i_params


def test_tiny_sizes_match_its_modules():
    preset, (i2v, t2i) = load_preset("tiny"), build_tiny_pipelines()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert {name: count(getattr(i2v, name)) for name in preset.size.i2v_params} == preset.size.i2v_params
    assert {name: count(getattr(t2i, name)) for name in preset.size.t2i_params} == preset.size.t2i_params
    config = i2v.transformer.config
    assert (preset.size.hidden_dim, preset.size.ffn_dim) == (
        config.num_attention_heads * config.attention_head_dim, config.ffn_dim)


def test_memory_estimate_follows_the_documented_formula():
    preset = load_preset("wan2.1-i2v-480p")
    latent_frames = (81 - 1) // 4 + 1
    assert segment_tokens(preset) == latent_frames * (480 // 16) * (832 // 16) == 32760
    per_token = (4 * 5120 + 2 * 13824) * 2
    params = sum(preset.size.i2v_params.values()) + sum(preset.size.t2i_params.values())
    quantized = sum(preset.size.i2v_params[c] for c in preset.quantize_components) + sum(
        preset.size.t2i_params[c] for c in preset.t2i_quantize_components)
    assert weight_bytes(preset, "none") == 2 * params
    assert weight_bytes(preset, "int8") == 2 * params - quantized
    for degree in SP_DEGREES:
        bf16, int8 = estimate_memory(preset, "none", degree), estimate_memory(preset, "int8", degree)
        assert bf16.weights == weight_bytes(preset, "none")  # replicated on every rank
        assert bf16.activations == int8.activations == math.ceil(32760 / degree) * per_token
        assert bf16.total == bf16.weights + bf16.activations
    with pytest.raises(ValueError, match="degree must be at least 1"):
        estimate_memory(preset, "none", 0)


@pytest.mark.parametrize("name", REAL)
def test_int8_roughly_halves_the_weights(name):
    preset = load_preset(name)
    assert 0.45 < weight_bytes(preset, "int8") / weight_bytes(preset, "none") < 0.55


def _tiny_fields(**changes):
    return {**load_preset("tiny").model_dump(), **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"default_width": 64}, "not one of the resolution_buckets"),
    ({"resolution_buckets": [[128, 128], [112, 128]]}, "not a multiple of 32"),
    ({"resolution_buckets": [[128, 128], [512, 512]]}, "over max_area"),
    ({"i2v_model": "models/wan/i2v"}, "neither a hub id"),
    ({"t2i_quantize_components": ["text_encoder_2"]}, "size.t2i_params does not list"),
])
def test_schema_rejects_inconsistent_presets(changes, message):
    with pytest.raises(ValidationError, match=message):
        Preset.model_validate(_tiny_fields(**changes))


def test_local_checkpoint_must_be_a_pipeline_directory(tmp_path, tiny_cache):
    with pytest.raises(CheckpointUnavailable, match="model_index.json does not exist"):
        locate_checkpoint(str(tmp_path), tiny_cache)
    (tmp_path / "model_index.json").write_text("{}")
    assert locate_checkpoint(str(tmp_path), tiny_cache) == str(tmp_path)


def test_missing_local_checkpoints_name_both_fields_and_the_preset_file(tmp_path, tiny_cache):
    preset = Preset.model_validate(_tiny_fields(i2v_model=str(tmp_path / "i2v"), t2i_model=str(tmp_path / "t2i")))
    with pytest.raises(CheckpointUnavailable) as err:
        checkpoint_paths(preset, tiny_cache)
    message = str(err.value)
    assert f"i2v_model {tmp_path / 'i2v'}" in message and f"t2i_model {tmp_path / 't2i'}" in message
    assert "set i2v_model and t2i_model to the directory's absolute path in" in message and "tiny.yaml" in message


def _tiny_flux():
    """A FluxPipeline (an image pipeline: no num_frames) with seeded two-layer components."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import ByT5Tokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL(block_out_channels=(4,), layers_per_block=1, latent_channels=1, norm_num_groups=1,
                          use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=384, hidden_size=32, intermediate_size=37,
                                                  num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
                                                  bos_token_id=0, eos_token_id=1, pad_token_id=0)),
        tokenizer=ByT5Tokenizer(model_max_length=77),
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4)),
        tokenizer_2=ByT5Tokenizer(),
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
    )


def test_image_pipeline_renders_a_keyframe():
    pipe = _tiny_flux()
    assert "num_frames" not in inspect.signature(pipe.__call__).parameters

    def render(seed):
        return render_keyframe(pipe, "a fox", 32, 16, steps=2, guidance=0.0,
                               generator=torch.Generator().manual_seed(seed), max_sequence_length=16)

    image = render(1)
    assert image.shape == (16, 32, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image, render(1), rtol=0, atol=1)  # CPU kernels may round one level apart
    assert np.abs(image.astype(int) - render(2)).mean() > 5


def test_tiny_vocabulary_is_the_worlds():
    from pipeline import world

    assert load_preset("tiny").vocabulary == world.VOCABULARY

"""Real presets' component classes at reduced depth and width, saved as local diffusers checkpoints, and a
preset file pointing the real preset at them: the CPU form of the GPU path (same pipeline classes and kwargs,
LoRA conversion, quantization order and context-parallel plan), for `pytest -m real_architecture`.

Reduced: 1-2 layers, hidden sizes of 32-64, a VAE of base width 4; ByT5 byte tokenizers stand in for the
sentencepiece ones (their vocabularies are downloads). Kept: the layouts (two Wan 2.2 experts with
boundary_ratio 0.9, 16 latent channels + 4 mask + 16 condition = 36 transformer inputs, patch 1x2x2 over an
8x-stride causal VAE, a FLUX transformer with CLIP and T5 encoders for keyframes).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from lora_files import write_wan_lora

from pipeline.presets import load_preset

WAN_DIM, WAN_FFN, WAN_HEADS, WAN_BLOCKS = 64, 128, 4, 2
TEXT_DIM = 32


IMAGE_DIM = 32


def _wan_transformer(seed: int, image: bool = False, image_positions: int | None = None):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    clip = dict(image_dim=IMAGE_DIM, added_kv_proj_dim=WAN_DIM, pos_embed_seq_len=image_positions) if image else {}
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=WAN_HEADS, attention_head_dim=WAN_DIM // WAN_HEADS,
        in_channels=36, out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=WAN_FFN, num_layers=WAN_BLOCKS,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **clip,
    )


def _wan_common() -> dict:
    """UMT5 text encoder, Wan VAE (z_dim 16, 8x spatial and 4x causal temporal stride), UniPC flow scheduler."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return dict(
        tokenizer=ByT5Tokenizer(),
        text_encoder=UMT5EncoderModel(UMT5Config(vocab_size=384, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                                                 num_heads=4, feed_forward_proj="gated-gelu")),
        vae=AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
    )


def wan22_i2v_a14b(folder: Path) -> Path:
    """Wan 2.2 I2V A14B's pipeline layout: two experts split at boundary_ratio 0.9, no CLIP image encoder."""
    from diffusers import WanImageToVideoPipeline

    WanImageToVideoPipeline(**_wan_common(), transformer=_wan_transformer(1), transformer_2=_wan_transformer(2),
                            boundary_ratio=0.9).save_pretrained(folder)
    return folder


def _clip(seed: int) -> dict:
    """A CLIP vision tower (its penultimate hidden states condition the image cross-attention) and its processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=37, num_hidden_layers=2,
                                               num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32))
    return dict(image_encoder=encoder, image_processor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}))


def wan21_i2v(folder: Path) -> Path:
    """Wan 2.1 I2V 14B's pipeline layout: one transformer with image cross-attention over CLIP features."""
    from diffusers import WanImageToVideoPipeline

    WanImageToVideoPipeline(**_wan_common(), **_clip(3), transformer=_wan_transformer(1, image=True)).save_pretrained(
        folder)
    return folder


def wan21_flf2v(folder: Path) -> Path:
    """Wan 2.1 FLF2V 14B's layout: Wan 2.1 I2V whose image embedding has positions for two CLIP images (the first
    and the last frame: 2 x 17 tokens here, 2 x 257 in the real model)."""
    from diffusers import WanImageToVideoPipeline

    transformer = _wan_transformer(1, image=True, image_positions=2 * ((32 // 8) ** 2 + 1))
    WanImageToVideoPipeline(**_wan_common(), **_clip(3), transformer=transformer).save_pretrained(folder)
    return folder


def wan22_ti2v_5b(folder: Path) -> Path:
    """Wan 2.2 TI2V 5B's layout: the Wan 2.2 VAE (z_dim 48, 16x spatial stride, patchified, residual), one
    transformer over its latents, and expand_timesteps (the first latent frame's tokens get timestep 0)."""
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel

    common = _wan_common()
    common["vae"] = AutoencoderKLWan(base_dim=4, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1],
                                     num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                                     in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                                     scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    torch.manual_seed(1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=WAN_HEADS, attention_head_dim=WAN_DIM // WAN_HEADS,
        in_channels=48, out_channels=48, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=WAN_FFN, num_layers=WAN_BLOCKS,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    )
    WanImageToVideoPipeline(**common, transformer=transformer, expand_timesteps=True).save_pretrained(folder)
    return folder


def flux_schnell(folder: Path) -> Path:
    """FLUX.1-schnell's pipeline layout: CLIP-L and T5 text encoders, a 16-channel VAE, no guidance embedding."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import ByT5Tokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=16, norm_num_groups=4,
                          down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                          use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=384, hidden_size=32, intermediate_size=37,
                                                  num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
                                                  bos_token_id=0, eos_token_id=1, pad_token_id=0)),
        tokenizer=ByT5Tokenizer(model_max_length=77),
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4)),
        tokenizer_2=ByT5Tokenizer(),
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=False),
    ).save_pretrained(folder)
    return folder


I2V_BUILDERS = {
    "wan2.1-i2v-480p": wan21_i2v, "wan2.1-i2v-720p": wan21_i2v, "wan2.1-i2v-480p-4step": wan21_i2v,
    "wan2.1-flf2v-720p": wan21_flf2v, "wan2.2-i2v-a14b": wan22_i2v_a14b, "wan2.2-i2v-a14b-4step": wan22_i2v_a14b,
    "wan2.2-ti2v-5b": wan22_ti2v_5b,
}


def synthetic_lora(folder: Path, name: str, seed: int, image: bool = False) -> Path:
    """A LoRA for the reduced Wan transformers in the original Wan key layout (as lightx2v and Kijai ship them)."""
    return write_wan_lora(folder / f"{name}.safetensors", blocks=WAN_BLOCKS, dim=WAN_DIM, ffn=WAN_FFN, seed=seed,
                          image=image)


def preset_file(name: str, folder: Path) -> Path:
    """Shipped preset `name` as a preset file on reduced checkpoints built in `folder`; each LoRA the preset
    fuses (lightx2v's, on the hub) is replaced by a synthetic one of the same target."""
    fields = load_preset(name).model_dump(mode="json")
    image = I2V_BUILDERS[name] in (wan21_i2v, wan21_flf2v)
    fields.update(
        name=f"{name}-cpu", i2v_model=str(I2V_BUILDERS[name](folder / "i2v")),
        t2i_model=str(flux_schnell(folder / "t2i")),
        loras=[{"source": str(synthetic_lora(folder, f"{lora['target']}_lora", i + 1, image)), "target": lora["target"]}
               for i, lora in enumerate(fields["loras"])],
        t2i_max_sequence_length=32,
    )
    path = folder / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path

"""Real presets' component classes at reduced depth and width, saved as local diffusers checkpoints, and a
preset file pointing the real preset at them: the CPU form of the GPU path (same pipeline classes and kwargs,
LoRA conversion, quantization order and context-parallel plan), for `pytest -m real_architecture`.

Reduced: 1-3 layers, hidden sizes of 32-64, a VAE of base width 4-8; ByT5 byte tokenizers stand in for the
sentencepiece ones and tokenizers built in code for LLaVA-Llama-3's and CLIP's (their vocabularies are downloads).
Kept: the layouts (two Wan 2.2 experts with boundary_ratio 0.9, 16 latent channels + 4 mask + 16 condition = 36
transformer inputs, patch 1x2x2 over an 8x-stride causal VAE, HunyuanVideo-I2V's token_replace conditioning and
576 LLaVA image tokens, a FLUX transformer with CLIP and T5 encoders for keyframes).
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


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3's pre-tokenizer
LLAMA3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<image>", "<pad>", "<unk>")


def llava_tokenizer(words: str = "a fox in snow"):
    """LLaVA-Llama-3's tokenizer as the HunyuanVideo-I2V pipeline uses it: Llama 3's pre-tokenizer and header tokens,
    `<image>`, and a word-level vocabulary of its prompt template's words (and of `words`; others are <unk>). Each
    of the template's words is one token, as in the real vocabulary, so the template tokenizes as the real one does:
    `<image>` at index 5 (image_emb_start) and the user's text from index 103 (crop_start)."""
    import re

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    text = DEFAULT_PROMPT_TEMPLATE["template"].format(words)
    vocab = {token: i for i, token in enumerate(LLAMA3_SPECIAL)}
    for part in re.split("|".join(map(re.escape, LLAMA3_SPECIAL)), text):
        for word, _ in split.pre_tokenize_str(part):
            vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = split
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in LLAMA3_SPECIAL])
    tokenizer.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                             special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", pad_token="<pad>", unk_token="<unk>")


def clip_tokenizer():
    """CLIP's BPE tokenizer over the byte alphabet with no merges (each character a token)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77)


HY_DIM, HY_HEADS, HY_BLOCKS = 32, 2, 2


def hunyuan_i2v(folder: Path) -> Path:
    """HunyuanVideo-I2V's layout: a dual/single-stream transformer with token_replace image conditioning (the first
    latent frame is the image's) and embedded guidance, the 16-channel causal VAE (8x spatial, 4x temporal stride),
    a LLaVA text encoder whose CLIP vision tower sees the image (336 pixels, patch 14: the template's 576 image
    tokens), and CLIP-L's text encoder for the pooled prompt."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tokenizer, tokenizer_2 = llava_tokenizer(), clip_tokenizer()
    torch.manual_seed(0)
    llama = LlamaConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=336, patch_size=14, projection_dim=32)
    text_encoder = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=llama, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, projector_hidden_act="gelu"))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32, bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id, pad_token_id=tokenizer_2.pad_token_id))
    vae = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4)
    torch.manual_seed(1)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=HY_HEADS, attention_head_dim=HY_DIM // HY_HEADS,
        num_layers=HY_BLOCKS, num_single_layers=1, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        rope_theta=256.0, rope_axes_dim=(4, 6, 6), image_condition_type="token_replace")
    HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        image_processor=CLIPImageProcessor(crop_size=336, size={"shortest_edge": 336}),
    ).save_pretrained(folder)
    return folder


def write_hunyuan_lora(path: Path, seed: int, rank: int = 4, std: float = 0.3) -> Path:
    """A LoRA for the reduced HunyuanVideo transformer in the original key layout (Tencent's, musubi-tuner's:
    `diffusion_model.double_blocks.N.img_attn_qkv.lora_A.weight`, q, k and v fused), on every dual-stream block's
    attention and feed-forward layers, which diffusers' lora_state_dict converts."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    ffn = int(HY_DIM * 4.0)
    layers = [(f"{stream}_{name}", width_in, width_out) for stream in ("img", "txt") for name, width_in, width_out in
              (("attn_qkv", HY_DIM, 3 * HY_DIM), ("attn_proj", HY_DIM, HY_DIM), ("mlp.fc1", HY_DIM, ffn),
               ("mlp.fc2", ffn, HY_DIM))]
    state = {}
    for block in range(HY_BLOCKS):
        for name, width_in, width_out in layers:
            key = f"diffusion_model.double_blocks.{block}.{name}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, width_in, generator=generator) * std
            state[f"{key}.lora_B.weight"] = torch.randn(width_out, rank, generator=generator) * std
    save_file(state, str(path))
    return path


I2V_BUILDERS = {
    "wan2.1-i2v-480p": wan21_i2v, "wan2.1-i2v-720p": wan21_i2v, "wan2.1-i2v-480p-4step": wan21_i2v,
    "wan2.1-flf2v-720p": wan21_flf2v, "wan2.2-i2v-a14b": wan22_i2v_a14b, "wan2.2-i2v-a14b-4step": wan22_i2v_a14b,
    "wan2.2-ti2v-5b": wan22_ti2v_5b, "hunyuanvideo-i2v": hunyuan_i2v,
}


def synthetic_lora(folder: Path, name: str, seed: int, preset: str) -> Path:
    """A LoRA for `preset`'s reduced transformers in its family's original key layout (Wan's as lightx2v and Kijai
    ship them, with the image cross-attention where the model has one; HunyuanVideo's as Tencent's)."""
    path = folder / f"{name}.safetensors"
    if I2V_BUILDERS[preset] is hunyuan_i2v:
        return write_hunyuan_lora(path, seed)
    return write_wan_lora(path, blocks=WAN_BLOCKS, dim=WAN_DIM, ffn=WAN_FFN, seed=seed,
                          image=I2V_BUILDERS[preset] in (wan21_i2v, wan21_flf2v))


def preset_file(name: str, folder: Path) -> Path:
    """Shipped preset `name` as a preset file on reduced checkpoints built in `folder`; each LoRA the preset
    fuses (lightx2v's, on the hub) is replaced by a synthetic one of the same target."""
    fields = load_preset(name).model_dump(mode="json")
    fields.update(
        name=f"{name}-cpu", i2v_model=str(I2V_BUILDERS[name](folder / "i2v")),
        t2i_model=str(flux_schnell(folder / "t2i")),
        loras=[{"source": str(synthetic_lora(folder, f"{lora['target']}_lora", i + 1, name)), "target": lora["target"]}
               for i, lora in enumerate(fields["loras"])],
        t2i_max_sequence_length=32,
    )
    path = folder / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path

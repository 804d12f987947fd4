"""Seeded synthetic LoRA files for the tiny Wan transformer, in the layouts users have."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_DIM, TINY_FFN, TINY_BLOCKS = 128, 512, 6  # pipeline/tiny_weights/i2v/transformer/config.json


def wan_lora_state(blocks: int = TINY_BLOCKS, dim: int = TINY_DIM, ffn: int = TINY_FFN, rank: int = 4,
                   seed: int = 0, std: float = 0.3, image: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA in the original Wan key layout (lightx2v, Kijai): `diffusion_model.blocks.N.self_attn.q.lora_down
    .weight` / `lora_up.weight` with an `alpha` per layer, on every attention and feed-forward linear layer
    (with `image`, also the image cross-attention's k_img and v_img, as Wan 2.1 I2V LoRAs have)."""
    generator = torch.Generator().manual_seed(seed)
    layers = [(f"{attn}.{o}", dim, dim) for attn in ("self_attn", "cross_attn") for o in "qkvo"]
    layers += [(f"cross_attn.{o}", dim, dim) for o in ("k_img", "v_img")] if image else []
    layers += [("ffn.0", dim, ffn), ("ffn.2", ffn, dim)]
    state = {}
    for block in range(blocks):
        for name, width_in, width_out in layers:
            key = f"diffusion_model.blocks.{block}.{name}"
            state[f"{key}.lora_down.weight"] = torch.randn(rank, width_in, generator=generator) * std
            state[f"{key}.lora_up.weight"] = torch.randn(width_out, rank, generator=generator) * std
            state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    return state


def write_wan_lora(path: Path, **kwargs) -> Path:
    save_file(wan_lora_state(**kwargs), str(path))
    return path


def write_diffusers_lora(path: Path, **kwargs) -> Path:
    """The same LoRA converted to the diffusers/PEFT layout (`transformer.blocks.0.attn1.to_q.lora_A.weight`), as
    diffusers' own converter gives it and `save_lora_weights` writes it."""
    from diffusers import WanImageToVideoPipeline

    state = WanImageToVideoPipeline.lora_state_dict(wan_lora_state(**kwargs))
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path

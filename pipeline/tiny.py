"""The embedded `tiny` checkpoints: real Wan-family diffusers/transformers classes, seeded weights.

`ensure_tiny_checkpoints` builds them once, saves them with `save_pretrained` into the cache
directory and returns the paths; everything else loads them with `from_pretrained`, exactly as it
would load a hub checkpoint. Random-weight VAEs decode to flat grey, so the decoder's biases are
zeroed and its output convolution re-initialised zero-mean with a gain: frames then show texture
that follows the latents and changes from frame to frame, which lets tests see a dropped,
reordered or wrongly blended frame.

The I2V pipeline is laid out like Wan 2.2 I2V: no CLIP image encoder; the first (and optional
last) frame condition the video through the VAE-encoded condition latents and mask channels, so
one transformer renders both first-frame and first-last-frame segments.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Bump when the architecture or initialisation below changes: old caches are then ignored.
TINY_VERSION = "v1"
SEED = 20250211
DECODER_GAIN = 1.5
TEXT_DIM = 32


def _vae():
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    with torch.no_grad():
        # Zero biases let the latent, not a fixed pattern, decide the picture; a zero-mean output
        # convolution with a gain centres it on mid-grey with visible contrast.
        for name, param in vae.decoder.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        weight = vae.decoder.conv_out.weight
        weight.sub_(weight.mean(dim=(1, 2, 3, 4), keepdim=True)).mul_(DECODER_GAIN)
    return vae


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=384, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )
    return UMT5EncoderModel(config)


def _transformer(in_channels: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )


def build_tiny_pipelines():
    """Build the tiny I2V and T2I pipelines in memory from fixed seeds (no files, no network)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import ByT5Tokenizer

    torch.manual_seed(SEED)
    vae, text_encoder = _vae(), _text_encoder()
    # I2V input: 16 noisy latent channels + 4 mask channels + 16 condition-latent channels.
    i2v_transformer = _transformer(in_channels=36)
    t2i_transformer = _transformer(in_channels=16)
    tokenizer = ByT5Tokenizer()
    shared = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)
    i2v = WanImageToVideoPipeline(
        **shared, transformer=i2v_transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0)
    )
    for module in (vae, text_encoder, i2v_transformer, t2i_transformer):
        module.eval()
    t2i = WanPipeline(**shared, transformer=t2i_transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    return i2v, t2i


def tiny_checkpoint_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"tiny-{TINY_VERSION}"


def ensure_tiny_checkpoints(cache_dir: Path) -> Path:
    """Return the directory holding `i2v/` and `t2i/`, building and saving them if absent.

    Saved into a temporary sibling and renamed, so concurrent callers never see half a checkpoint.
    """
    target = tiny_checkpoint_dir(cache_dir)
    if (target / "i2v" / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the embedded tiny checkpoints in %s", target)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        i2v, t2i = build_tiny_pipelines()
        i2v.save_pretrained(staging / "i2v")
        t2i.save_pretrained(staging / "t2i")
        os.replace(staging, target)
    except OSError:
        if not (target / "i2v" / "model_index.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_embedded(model: str, cache_dir: Path) -> Path:
    """Map `embedded://tiny/i2v` to its saved directory, building the checkpoints if needed."""
    name, _, component = model.removeprefix("embedded://").partition("/")
    if name != "tiny" or component not in ("i2v", "t2i"):
        raise ValueError(f"unknown embedded checkpoint {model!r}; known: embedded://tiny/i2v, embedded://tiny/t2i")
    return ensure_tiny_checkpoints(cache_dir) / component


if __name__ == "__main__":
    import argparse

    from pipeline.config import default_cache_dir

    parser = argparse.ArgumentParser(description="Build and save the embedded tiny checkpoints.")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    print(ensure_tiny_checkpoints(parser.parse_args().cache_dir))

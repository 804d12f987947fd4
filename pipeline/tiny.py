"""The embedded `tiny` checkpoints: real Wan-family diffusers/transformers classes, seeded weights.

`ensure_tiny_checkpoints` builds them once, saves them with `save_pretrained` into the cache
directory and returns the paths; everything else loads them with `from_pretrained`, exactly as it
would load a hub checkpoint.

The transformers and the text encoder are random (seeded). The VAE is not: a random Wan VAE
decodes to flat grey and its encoder does not invert its decoder, so no frame could ever look like
the keyframe that conditioned it. `_vae` sets the weights of a real `AutoencoderKLWan` by hand so
that it is a (numerically) linear autoencoder: each latent position decodes to one tinted grey
8x8 block (the mean of the 16 normalised latent channels), the four frames of a latent chunk
blend from the previous latent frame into this one and end on it, and the encoder reads the block
back from the last frame of each chunk. Frames then change with every latent, which lets tests see
a dropped, reordered or wrongly blended frame, and encode -> decode returns a decoded frame to
within uint8 rounding, which lets tests see whether a keyframe landed where the plan put it.

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

from pipeline.presets import TINY_VERSION  # bump it there when the architecture or initialisation below changes

logger = logging.getLogger(__name__)

SEED = 20250211
VAE_GAIN = 1.5      # pixel contrast (in [-1, 1]) per unit of the mean normalised latent
VAE_TINT = (1.0, 0.85, 0.7)
VAE_CONSTANT = 1000.0
CROSS_ATTENTION_GAIN = 10.0
TEXT_DIM = 32


def _centre(conv, out_channel: int, in_channel: int, value: float) -> None:
    """Set the weight of a convolution's centre pixel (current frame, for a causal one) for one channel pair."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    kernel = conv.weight.shape[2:]
    causal = isinstance(conv, WanCausalConv3d)
    tap = tuple(size - 1 if causal and axis == 0 else size // 2 for axis, size in enumerate(kernel))
    conv.weight[(out_channel, in_channel, *tap)] = value


def _vae():
    """A Wan VAE whose weights make it a linear autoencoder of tinted grey 8x8 blocks (see the module docstring).

    Residual and attention branches are zeroed, so only the main path's convolutions act. Every RMS norm
    on that path normalises a constant channel of size `VAE_CONSTANT` next to the value channel, which
    keeps it linear to within (value / VAE_CONSTANT)^2; the SiLU after it sees values near zero, where
    its slope is 1/2.
    """
    from diffusers import AutoencoderKLWan
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample, WanResidualBlock

    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    mean, std = vae.config.latents_mean, vae.config.latents_std
    tint = torch.tensor(VAE_TINT)
    head = 3**0.5 / VAE_CONSTANT * 0.5  # value -> norm -> SiLU, for small values
    with torch.no_grad():
        for param in vae.parameters():
            param.zero_()
        for module in vae.modules():
            if hasattr(module, "gamma"):
                module.gamma.fill_(1.0)
            # A shortcut that widens 1 channel to 3 carries the value into channel 1 and the constant into 0.
            if isinstance(module, WanResidualBlock) and isinstance(module.conv_shortcut, WanCausalConv3d):
                _centre(module.conv_shortcut, 1, 0, 1.0)
                module.conv_shortcut.bias[0] = VAE_CONSTANT
        for channel in range(16):
            vae.post_quant_conv.weight[channel, channel] = 1.0
        for channel in range(32):
            vae.quant_conv.weight[channel, channel] = 1.0

        # Encoder: channel 0 = the pixel's projection on the tint, channel 1 = the constant; each downsample
        # averages 2x2 pixels and keeps the newest frame of each pair.
        encoder = vae.encoder
        for rgb in range(3):
            _centre(encoder.conv_in, 0, rgb, float(tint[rgb] / (tint @ tint)))
        for block in encoder.down_blocks:
            if isinstance(block, WanResample):
                block.resample[1].weight[0, 0, :2, :2] = 0.25
                block.resample[1].bias[1] = VAE_CONSTANT
                if hasattr(block, "time_conv"):
                    _centre(block.time_conv, 0, 0, 1.0)
                    block.time_conv.bias[1] = VAE_CONSTANT
        for channel in range(16):  # every normalised latent channel = value / VAE_GAIN
            _centre(encoder.conv_out, channel, 0, float(std[channel] / (VAE_GAIN * head)))
            encoder.conv_out.bias[channel] = float(mean[channel])

        # Decoder: value = VAE_GAIN * mean of the 16 normalised latent channels in channel 1, the previous
        # frame's value in channel 2, the constant in 0. Each temporal upsample turns a frame into
        # (3 previous + 5 current) / 8 and current. The previous frame comes from a causal convolution's
        # cache (conv_in's at latent rate, a residual branch's at twice that), not from the upsample's own
        # time convolution, which sees zero padding instead of frame 0 in the first chunk after it.
        decoder = vae.decoder
        offset = -float(sum(VAE_GAIN * m / (16 * s) for m, s in zip(mean, std, strict=True)))
        for channel in range(16):
            _centre(decoder.conv_in, 1, channel, float(VAE_GAIN / (16 * std[channel])))
            decoder.conv_in.weight[2, channel, 1, 1, 1] = float(VAE_GAIN / (16 * std[channel]))  # tap t-1
        decoder.conv_in.bias[0], decoder.conv_in.bias[1], decoder.conv_in.bias[2] = VAE_CONSTANT, offset, offset
        # The second frame-doubling block's residual branch copies the previous frame's value into channel 2:
        # norm (x sqrt(3) / VAE_CONSTANT), SiLU (x 1/2) and back, twice.
        relay = decoder.up_blocks[1].resnets[1]
        gain = 2 * VAE_CONSTANT / 3**0.5
        relay.conv1.weight[2, 1, 1, 1, 1] = gain  # tap t-1
        relay.conv1.bias[0] = VAE_CONSTANT
        _centre(relay.conv2, 2, 2, gain)
        for block in decoder.up_blocks:
            if block.upsamplers is None:
                continue
            upsample = block.upsamplers[0]
            _centre(upsample.resample[1], 0, 1, 1.0)
            if hasattr(upsample, "time_conv"):  # output channels: frame A 0..2, frame B 3..5
                _centre(upsample.time_conv, 1, 2, 3 / 8)
                _centre(upsample.time_conv, 1, 1, 5 / 8)
                _centre(upsample.time_conv, 4, 1, 1.0)
                upsample.time_conv.bias[0] = upsample.time_conv.bias[3] = VAE_CONSTANT
        for rgb in range(3):
            _centre(decoder.conv_out, rgb, 1, float(tint[rgb] / head))
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

    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )
    # Random cross-attention averages a prompt's few tokens with the zero padding up to max_sequence_length,
    # so the prompt would barely move the picture; a larger output projection makes it visible.
    with torch.no_grad():
        for block in transformer.blocks:
            block.attn2.to_out[0].weight.mul_(CROSS_ATTENTION_GAIN)
    return transformer


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

"""The embedded `tiny` checkpoints: real Wan-family diffusers/transformers classes, trained in this repository.

The weights ship in `pipeline/tiny_weights/{i2v,t2i}` (a `save_pretrained` layout, made by
`python -m pipeline.train_tiny`); `ensure_tiny_checkpoints` copies them into the cache directory and
everything loads them with `from_pretrained`, exactly as it would load a hub checkpoint. The model
knows the procedural world of `pipeline/world.py`: coloured balls, squares and triangles moving
left, right, up or down over flat coloured backgrounds, from prompts in that world's vocabulary.

The VAE is not trained: `_vae` sets the weights of a real residual (Wan 2.2-style) `AutoencoderKLWan`
by hand so that it is a linear autoencoder of 32x32 "thumbnails". A latent frame is the 4x4-pixel
means of one video frame, 3 channels (RGB in [-1, 1]); the encoder keeps the last frame of each
4-frame chunk, and the decoder draws each latent cell as a 4x4 block and blends the four frames of a
chunk from the previous latent frame into this one (prev weights 5/8, 1/2, 1/4, 0), so motion is
smooth and encode(decode(z)) == z. Training therefore renders latents straight from the world
(`world.thumbnails`) and never runs the VAE.

The transformers predict the clean latent (x0, `prediction_type="sample"`), sampled by DPM-Solver++
on flow sigmas (4 steps: 1, .75, .5, .25, no CFG for the I2V). The I2V is laid out like Wan 2.2 I2V:
no CLIP image encoder; the first (and optional last) frame condition the video through the VAE-encoded
condition latents and mask channels, so one transformer renders both first-frame and first-last-frame
segments. Its temporal patch of 3 latent frames makes valid lengths 12k + 9 frames. The T2I draws a
keyframe's objects at the fixed `world.KEYFRAME_PLACES` (see `pipeline.train_tiny`).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.presets import TINY_VERSION  # bump it there when the weights or the architecture below change

logger = logging.getLogger(__name__)

SEED = 20251201
WEIGHTS = Path(__file__).resolve().parent / "tiny_weights"
Z_DIM = 3                 # latent channels: RGB of a 4x4-pixel cell
ENCODER_DIM = 4           # constant + RGB
DECODER_DIM = 7           # constant + current RGB + previous latent frame's RGB
CURRENT, PREVIOUS = 1, 4  # first channel of each RGB triple in the decoder
CONSTANT = 1e4            # the channel that keeps every RMS norm linear (see _vae)
CHUNK_BLEND = (0.5, 0.25)  # share of the previous latent frame each frame-doubling block blends into its first frame
TEXT_DIM = 64
MAX_SEQUENCE_LENGTH = 64  # ByT5 bytes; training and both pipelines pad prompts to this


def _tap(conv, out_channel: int, in_channel: int, value: float, frame: int | None = None) -> None:
    """Set one convolution weight at the kernel's spatial centre, for the newest frame of a causal one (or
    `frame` steps into its kernel)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    kernel = conv.weight.shape[2:]
    causal = isinstance(conv, WanCausalConv3d)
    tap = [size - 1 if causal and axis == 0 else size // 2 for axis, size in enumerate(kernel)]
    if frame is not None:
        tap[0] = frame
    conv.weight[(out_channel, in_channel, *tap)] = value


def _vae():
    """A residual Wan VAE whose weights make it a linear thumbnail autoencoder (see the module docstring).

    Every convolution is zero but those set here, so each residual block is its identity shortcut and each
    down/up block its parameter-free `AvgDown3D`/`DupUp3D` shortcut (2x2 mean, nearest 2x) plus what its
    resampler adds. Encoder: a down block's resampler adds (newest - older)/2 of each frame pair, so time
    downsampling keeps the last frame of a chunk instead of the mean. Decoder: `conv_in` also reads the
    previous latent frame (its causal cache), and a frame-doubling resampler moves its first frame towards
    it. The RMS norm before each `conv_out` sees a channel held at `CONSTANT`, so it scales the others by
    sqrt(dim) / CONSTANT, and the SiLU after it has slope 1/2 there: linear to about 1e-4.
    `num_res_blocks=-1` leaves the decoder's up blocks without residual blocks, which a linear decoder does
    not need and which would otherwise run 3x3x3 convolutions at full resolution.
    """
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(
        base_dim=ENCODER_DIM, decoder_base_dim=DECODER_DIM, z_dim=Z_DIM, dim_mult=[1, 1, 1], num_res_blocks=-1,
        temperal_downsample=[True, True], is_residual=True, latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM,
        scale_factor_spatial=4, scale_factor_temporal=4,
    )
    with torch.no_grad():
        for param in vae.parameters():
            param.zero_()
        for module in vae.modules():
            if hasattr(module, "gamma"):
                module.gamma.fill_(1.0)
        for channel in range(2 * Z_DIM):
            vae.quant_conv.weight[channel, channel] = 1.0
        for channel in range(Z_DIM):
            vae.post_quant_conv.weight[channel, channel] = 1.0

        encoder = vae.encoder
        encoder.conv_in.bias[0] = CONSTANT
        for rgb in range(3):
            _tap(encoder.conv_in, 1 + rgb, rgb, 1.0)
        for block in encoder.down_blocks:
            if block.downsampler is None:
                continue
            for channel in range(ENCODER_DIM):
                # Half a 2x2 mean: the first chunk's one frame gets the other half from the shortcut, whose
                # time mean pads it with a zero frame; later frame pairs get (newest - older) / 2 from time_conv.
                block.downsampler.resample[1].weight[channel, channel, :2, :2] = 0.125
                block.downsampler.time_conv.weight[channel, channel, 1, 0, 0] = -1.0
                block.downsampler.time_conv.weight[channel, channel, 2, 0, 0] = 1.0
        for rgb in range(Z_DIM):  # mean (mu) channels; log-variance stays zero
            _tap(encoder.conv_out, rgb, 1 + rgb, 2 * CONSTANT / ENCODER_DIM**0.5)

        decoder = vae.decoder
        decoder.conv_in.bias[0] = CONSTANT
        for rgb in range(Z_DIM):
            _tap(decoder.conv_in, CURRENT + rgb, rgb, 1.0)
            _tap(decoder.conv_in, PREVIOUS + rgb, rgb, 1.0, frame=1)
        doubling = [block.upsampler for block in decoder.up_blocks if block.upsampler is not None]
        for upsample, share in zip(doubling, CHUNK_BLEND, strict=True):
            for rgb in range(3):
                # time_conv writes share * (previous - current) into the first new frame's PREVIOUS slots (the
                # second gets nothing); the spatial conv adds those slots to CURRENT. In the first chunk
                # time_conv does not run and PREVIOUS is zero (no earlier frame), so nothing is added.
                _tap(upsample.time_conv, PREVIOUS + rgb, PREVIOUS + rgb, share)
                _tap(upsample.time_conv, PREVIOUS + rgb, CURRENT + rgb, -share)
                _tap(upsample.resample[1], CURRENT + rgb, PREVIOUS + rgb, 1.0)
        for rgb in range(3):
            _tap(decoder.conv_out, rgb, CURRENT + rgb, 2 * CONSTANT / DECODER_DIM**0.5)
    return vae


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=384, d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=64, dropout_rate=0.0,
    )
    return UMT5EncoderModel(config)


def _transformer(in_channels: int, patch_size: tuple[int, int, int], num_layers: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=patch_size, num_attention_heads=4, attention_head_dim=32, in_channels=in_channels,
        out_channels=Z_DIM, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=512, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )


def scheduler():
    """DPM-Solver++ on flow sigmas for an x0-predicting model: 4 steps are sigmas 1, .75, .5, .25."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="sample", flow_shift=1.0)


def build_tiny_pipelines():
    """The tiny I2V and T2I pipelines in memory, untrained (seeded), with the hand-set VAE: what
    `pipeline.train_tiny` starts from."""
    import torch
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from transformers import ByT5Tokenizer

    torch.manual_seed(SEED)
    vae, text_encoder = _vae(), _text_encoder()
    # I2V input: Z_DIM noisy latent channels + 4 mask channels + Z_DIM condition-latent channels. A token is
    # 3 latent frames (12 video frames) of 8x8 latent cells (32x32 pixels): 112 tokens for 81 frames.
    i2v_transformer = _transformer(2 * Z_DIM + 4, patch_size=(3, 8, 8), num_layers=6)
    t2i_transformer = _transformer(Z_DIM, patch_size=(1, 4, 4), num_layers=4)
    tokenizer = ByT5Tokenizer()
    i2v = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                  transformer=i2v_transformer, scheduler=scheduler())
    # The T2I starts from the same text encoder and ends with its own: see pipeline.train_tiny.
    keyframe_text = copy.deepcopy(text_encoder)
    t2i = WanPipeline(tokenizer=tokenizer, text_encoder=keyframe_text, vae=vae, transformer=t2i_transformer,
                      scheduler=scheduler())
    for module in (vae, text_encoder, keyframe_text, i2v_transformer, t2i_transformer):
        module.eval()
    return i2v, t2i


def tiny_checkpoint_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"tiny-{TINY_VERSION}"


def ensure_tiny_checkpoints(cache_dir: Path, weights: Path = WEIGHTS) -> Path:
    """Return the cache directory holding `i2v/` and `t2i/`, copying the shipped weights there if absent.

    Copied into a temporary sibling and renamed, so concurrent callers never see half a checkpoint.
    """
    target = tiny_checkpoint_dir(cache_dir)
    if (target / "i2v" / "model_index.json").exists():
        return target
    if not (weights / "i2v" / "model_index.json").exists():
        raise RuntimeError(f"the embedded tiny weights are missing from {weights}; "
                           "train them with `python -m pipeline.train_tiny` (see README)")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("copying the embedded tiny checkpoints to %s", target)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for component in ("i2v", "t2i"):
            shutil.copytree(weights / component, staging / component)
        os.replace(staging, target)
    except OSError:
        if not (target / "i2v" / "model_index.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_embedded(model: str, cache_dir: Path) -> Path:
    """Map `embedded://tiny/i2v` to its directory in the cache, copying the shipped checkpoints if needed."""
    name, _, component = model.removeprefix("embedded://").partition("/")
    if name != "tiny" or component not in ("i2v", "t2i"):
        raise ValueError(f"unknown embedded checkpoint {model!r}; known: embedded://tiny/i2v, embedded://tiny/t2i")
    return ensure_tiny_checkpoints(cache_dir) / component


if __name__ == "__main__":
    import argparse

    from pipeline.config import default_cache_dir

    parser = argparse.ArgumentParser(description="Copy the shipped tiny checkpoints into the cache.")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    print(ensure_tiny_checkpoints(parser.parse_args().cache_dir))

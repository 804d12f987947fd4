"""Keyframe and segment generation on one rank: load a preset's pipelines, render frames.

Frames cross process boundaries as uint8 arrays: keyframes (height, width, 3) and segments
(num_frames, height, width, 3), RGB.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from pipeline.checkpoints import checkpoint_paths
from pipeline.config import ModelConfig, SequenceParallelConfig
from pipeline.loras import fuse_loras
from pipeline.parallel import enable_sequence_parallel
from pipeline.presets import Preset, load_preset
from pipeline.quantize import quantize_int8
from pipeline.requests import SegmentRequest
from pipeline.schedulers import few_step_scheduler

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_keyframe(pipe, prompt: str, width: int, height: int, steps: int, guidance: float,
                    generator: torch.Generator, max_sequence_length: int | None = None) -> np.ndarray:
    """One image from a T2I pipeline, uint8 (height, width, 3). A video pipeline (one that takes
    `num_frames`, e.g. WanPipeline) renders a one-frame video; an image pipeline (FluxPipeline) an image."""
    call = dict(prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                generator=generator, output_type="np")
    if max_sequence_length is not None:
        call["max_sequence_length"] = max_sequence_length
    if "num_frames" in inspect.signature(pipe.__call__).parameters:
        return _to_uint8(pipe(**call, num_frames=1).frames[0][0])
    return _to_uint8(pipe(**call).images[0])


class SegmentGenerator:
    """A preset's I2V and T2I pipelines, loaded once on one device, rendering many requests.

    With `keyframes=False` the T2I pipeline is not loaded (the other ranks of a sequence-parallel group:
    keyframes are one frame and run on rank 0 alone, and a FLUX keyframe model is ~17 GiB in bf16).
    """

    def __init__(self, config: ModelConfig, device: torch.device,
                 sequence: SequenceParallelConfig | None = None, keyframes: bool = True):
        self.config = config
        self.preset: Preset = load_preset(config.preset)
        self.device = device
        self.sequence = sequence or SequenceParallelConfig()
        self.quantized: list[str] = []
        self.i2v, self.t2i = self._load(keyframes)

    def _load(self, keyframes: bool):
        import diffusers
        import transformers

        for library in (diffusers, transformers):
            library.utils.logging.set_verbosity_error()
            library.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|torch)\.")

        dtype = DTYPES[self.preset.dtype]
        i2v_path, t2i_path = checkpoint_paths(self.preset, self.config.cache_dir)
        i2v_cls = getattr(diffusers, self.preset.i2v_pipeline)
        t2i_cls = getattr(diffusers, self.preset.t2i_pipeline)
        i2v = i2v_cls.from_pretrained(i2v_path, dtype=dtype)
        if self.preset.scheduler == "few_step_euler":
            i2v.scheduler = few_step_scheduler(i2v.scheduler.config, self.preset.flow_shift)
        # LoRAs -> fuse -> quantize -> sequence parallelism: the only order that works (pipeline/loras.py).
        fuse_loras(i2v, (*self.preset.loras, *self.config.loras))
        if self.config.quantize == "int8":
            self.quantized = quantize_int8(i2v, self.preset.quantize_components)
        t2i = None
        if keyframes:
            shared = {name: getattr(i2v, name) for name in self.preset.t2i_shares}
            t2i = t2i_cls.from_pretrained(t2i_path, dtype=dtype, **shared)
            if self.config.quantize == "int8":
                quantize_int8(t2i, tuple(c for c in self.preset.t2i_quantize_components if c not in shared))
        for pipe in (i2v, t2i):
            if pipe is not None:
                pipe.to(self.device)
                pipe.set_progress_bar_config(disable=True)
        # The I2V transformers are sharded (both experts of Wan 2.2 A14B: each runs some of the steps); the T2I's
        # is not: keyframes are one frame, rendered on rank 0 alone.
        experts = [m for m in (i2v.transformer, getattr(i2v, "transformer_2", None)) if m is not None]
        enable_sequence_parallel(experts, self.sequence, self.preset.sp_backend, str(self.device))
        return i2v, t2i

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(seed)

    def keyframe(self, prompt: str, seed: int, width: int, height: int,
                 steps: int | None = None, guidance: float | None = None) -> np.ndarray:
        """Render one keyframe with the T2I pipeline: uint8 (height, width, 3).

        `steps` and `guidance` are the plan's keyframe sampling (RenderPlan.keyframe_steps and
        keyframe_guidance); each left None is the preset's default (Preset.keyframe_sampling).
        """
        if self.t2i is None:
            raise RuntimeError("this generator was loaded without the keyframe (T2I) pipeline")
        default_steps, default_guidance = self.preset.keyframe_sampling(self.preset.steps, self.preset.guidance)
        return render_keyframe(
            self.t2i, prompt, width, height, steps or default_steps, default_guidance if guidance is None else guidance,
            self._generator(seed), self.preset.t2i_max_sequence_length,
        )

    @torch.no_grad()
    def _condition_latents(self, request: SegmentRequest) -> dict[int, torch.Tensor]:
        """The normalised VAE latents of the first (and last) condition image, by latent frame index.

        Each image is encoded as a one-frame video, as the I2V pipeline encodes its first frame (the
        VAE is causal); the last image's latent is the last latent frame.
        """
        pipe = self.i2v
        vae = pipe.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)

        def encode(image: np.ndarray) -> torch.Tensor:
            pixels = pipe.video_processor.preprocess(Image.fromarray(image), height=request.height, width=request.width)
            latent = vae.encode(pixels.unsqueeze(2).to(self.device, vae.dtype)).latent_dist.mode()[:, :, 0]
            return ((latent.float().cpu() - mean) / std).to(self.device)

        pins = {0: encode(request.first)}
        if request.last is not None:
            pins[(request.num_frames - 1) // pipe.vae_scale_factor_temporal] = encode(request.last)
        return pins

    def segment(self, request: SegmentRequest,
                on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Render one I2V segment: uint8 (num_frames, height, width, 3).

        `on_step(step, steps)` runs after each denoising step (1-based); an exception it raises
        stops the render there.
        """
        if request.last is not None and not self.preset.supports_last_frame:
            raise ValueError(f"preset {self.preset.name!r} cannot condition on a last frame")
        if request.last is None and self.preset.requires_last_frame:
            raise ValueError(f"preset {self.preset.name!r} conditions every segment on a first and a last frame")
        steps = request.steps or self.preset.steps
        pins = self._condition_latents(request) if self.preset.pin_conditioned_frames else {}

        def step_end(pipe, index, timestep, tensors):
            for latent_frame, latent in pins.items():
                tensors["latents"][:, :, latent_frame] = latent
            if on_step is not None:
                on_step(index + 1, steps)
            return tensors

        # Only first-last-frame pipelines take `last_image` (HunyuanVideo's I2V does not).
        conditions = {"last_image": Image.fromarray(request.last)} if request.last is not None else {}
        if self.preset.max_sequence_length is not None:
            conditions["max_sequence_length"] = self.preset.max_sequence_length
        out = self.i2v(
            image=Image.fromarray(request.first), **conditions, prompt=request.prompt,
            height=request.height, width=request.width, num_frames=request.num_frames,
            num_inference_steps=steps, callback_on_step_end=step_end,
            guidance_scale=self.preset.guidance if request.guidance is None else request.guidance,
            generator=self._generator(request.seed), output_type="np",
        ).frames[0]
        return _to_uint8(out)

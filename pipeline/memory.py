"""GPU memory one sequence-parallel rank needs for a preset, estimated from its parameter counts.

Nothing is loaded and torch is not imported, so `minutereel presets` answers at once.

    per rank = weights + activations

- Weights: rank 0 holds both pipelines whole (the other ranks only the I2V one: keyframes run on rank 0),
  and the estimate is rank 0's. Sequence parallelism (diffusers' context parallelism,
  xDiT's USP) splits attention over the sequence, not the weights, so they do not shrink with the degree.
  A component the preset quantizes costs 1 byte per parameter (qint8: `python -m bench.quant` measures
  0.50x of bf16 for a whole transformer, scales, norms and biases included); any other costs the compute
  dtype's size. Components the T2I pipeline borrows from the I2V count once.
- Activations: the peak inside one transformer block while denoising the preset's default segment
  (max_frames at default_width x default_height). The latent has (max_frames - 1) / frame_modulus + 1
  frames (the frame rule is the VAE's temporal stride) of (height / spatial_multiple) x
  (width / spatial_multiple) tokens (spatial_multiple is VAE stride x patch size). Each rank holds
  ceil(tokens / degree) of them, each costing 4 * hidden_dim + 2 * ffn_dim values of the compute dtype:
  the residual stream, the normalised input, the attention output and an all-to-all buffer, then the
  feed-forward intermediate before and after its activation.

Left out: the CUDA context and allocator slack (about 1-2 GiB), the VAE's decode workspace (grows with
frames x pixels; tiled decoding bounds it), text-encoder activations (a few hundred tokens), keyframe
(T2I) activations (one frame), and classifier-free guidance, which these pipelines run as a second
transformer pass after the first, not as a doubled batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pipeline.presets import Preset

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
INT8_BYTES = 1
SP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank holds: pipeline weights and the peak transformer-block activations."""

    weights: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.activations


def segment_tokens(preset: Preset) -> int:
    """Transformer tokens of the default segment: latent frames x latent rows x latent columns (after patching)."""
    latent_frames = (preset.max_frames - preset.frame_remainder) // preset.frame_modulus + 1
    rows = preset.default_height // preset.spatial_multiple
    columns = preset.default_width // preset.spatial_multiple
    return latent_frames * rows * columns


def weight_bytes(preset: Preset, quantize: Literal["none", "int8"]) -> float:
    """Bytes of both pipelines' weights with `quantize` applied to the preset's listed components."""
    dense = DTYPE_BYTES[preset.dtype]

    def total(params: dict[str, float], quantized: tuple[str, ...]) -> float:
        return sum(count * (INT8_BYTES if quantize == "int8" and name in quantized else dense)
                   for name, count in params.items())

    return (total(preset.size.i2v_params, preset.quantize_components)
            + total(preset.size.t2i_params, preset.t2i_quantize_components))


def estimate_memory(preset: Preset, quantize: Literal["none", "int8"], degree: int) -> MemoryEstimate:
    """Memory per rank for one default segment on `degree` sequence-parallel ranks (see the module docstring)."""
    if degree < 1:
        raise ValueError(f"degree must be at least 1, got {degree}")
    per_token = (4 * preset.size.hidden_dim + 2 * preset.size.ffn_dim) * DTYPE_BYTES[preset.dtype]
    return MemoryEstimate(weight_bytes(preset, quantize), math.ceil(segment_tokens(preset) / degree) * per_token)

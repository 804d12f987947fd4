"""Sequence parallelism for a pipeline's transformer, and the process group it runs on.

Backends:
- `diffusers`: diffusers' own context parallelism (`enable_parallelism` with Ulysses or Ring
  attention). It works on CPU with gloo, but diffusers picks the rank's device as
  `rank % torch.accelerator.device_count()`, which divides by zero on a host without an
  accelerator; `_cpu_accelerator_shim` reports one (CPU) device for that call only.
- `none`: a transformer diffusers has no exact context-parallel plan for (HunyuanVideo); such a preset
  renders at degree 1 only. (xDiT's xfuser is not a backend here: it cannot be imported without a GPU,
  has no HunyuanVideo-I2V support, and would replace our pipelines with its own runner.)
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from pipeline.config import SequenceParallelConfig

if TYPE_CHECKING:  # torch is imported where it runs: the driver imports this module and needs no torch
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of one group meet: rank 0's address and a free port there."""

    address: str
    port: int

    @property
    def init_method(self) -> str:
        return f"tcp://{self.address}:{self.port}"


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def collective_backend(device: str) -> str:
    """`nccl` for CUDA devices, `gloo` for CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def init_process_group(rendezvous: Rendezvous, rank: int, world_size: int, device: str, timeout_s: float) -> None:
    """Join the group's torch.distributed process group; collectives time out after `timeout_s` seconds."""
    import torch

    torch.distributed.init_process_group(
        backend=collective_backend(device), init_method=rendezvous.init_method, rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


@contextlib.contextmanager
def _cpu_accelerator_shim():
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def check_sequence_parallel(preset_name: str, backend: str, degree: int) -> None:
    """ValueError unless the preset's `backend` can shard its transformer over `degree` ranks."""
    if degree > 1 and backend == "none":
        raise ValueError(
            f"preset {preset_name!r} renders at --sp-degree 1 only: diffusers has no exact context-parallel plan for "
            "its transformer (see its YAML); use more --workers instead"
        )


def enable_sequence_parallel(transformers: list[torch.nn.Module], config: SequenceParallelConfig, backend: str,
                             device: str) -> None:
    """Shard each transformer's attention over the sequence across the process group's ranks (every one that
    runs a denoising step: Wan 2.2 A14B has two experts, sharded alike over one mesh)."""
    if config.degree == 1:
        return
    if backend != "diffusers":
        raise ValueError(f"sp_backend {backend!r} cannot shard a transformer (degree {config.degree} asked); "
                         "only 'diffusers' can")
    from diffusers import ContextParallelConfig

    if config.attention == "ring" and not device.startswith("cuda"):
        # Ring attention merges partial results by log-sum-exp, which only the CUDA kernels return.
        raise ValueError(
            "ring attention needs an attention kernel that returns log-sum-exp (cuDNN, flash, sage: CUDA only); "
            "use attention 'ulysses' on CPU"
        )
    degrees = {"ulysses_degree": config.degree} if config.attention == "ulysses" else {"ring_degree": config.degree}
    parallel = ContextParallelConfig(**degrees)
    for transformer in transformers:
        if config.attention == "ring":
            transformer.set_attention_backend("_native_cudnn")
        with _cpu_accelerator_shim():
            transformer.enable_parallelism(config=parallel)
    logger.info("sequence parallel: %s degree %d on %d transformer(s)", config.attention, config.degree,
                len(transformers))


def probe_transformer(transformer: torch.nn.Module, seed: int, latent_frames: int, latent_height: int,
                      latent_width: int, text_tokens: int = 16) -> torch.Tensor:
    """One forward pass of a Wan-style transformer on seeded random inputs (latent units), the
    same on every rank. Lets tests and benchmarks compare sequence-parallel degrees directly."""
    import torch

    config = transformer.config
    generator = torch.Generator().manual_seed(seed)
    device = next(transformer.parameters()).device
    hidden = torch.randn(1, config.in_channels, latent_frames, latent_height, latent_width, generator=generator)
    text = torch.randn(1, text_tokens, config.text_dim, generator=generator)
    timestep = torch.tensor([500.0])
    with torch.no_grad():
        out = transformer(hidden_states=hidden.to(device), timestep=timestep.to(device),
                          encoder_hidden_states=text.to(device), return_dict=False)[0]
    return out.float().cpu()

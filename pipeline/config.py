"""Configs for the pipeline layer: which model to load and how to stitch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.presets import LoraSpec, parse_loras


def default_cache_dir() -> Path:
    """Where embedded checkpoints are saved: ~/.cache/minutereel."""
    return Path.home() / ".cache" / "minutereel"


class ModelConfig(BaseModel):
    """Which preset to load on every rank, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field("tiny", description="Preset name (configs/presets/NAME.yaml), or a preset YAML file's path.")
    quantize: Literal["none", "int8"] = Field(
        "none", description="Weight quantization of the preset's listed components."
    )
    loras: tuple[LoraSpec, ...] = Field(
        (), description="LoRAs fused into the I2V transformers after the preset's own, before quantization "
                        "(objects, or --lora strings PATH_OR_ID[:SCALE])."
    )

    _parse_loras = field_validator("loras", mode="before")(parse_loras)
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where embedded checkpoints are saved.")


class SequenceParallelConfig(BaseModel):
    """How the ranks of one shard group split a transformer's attention over the sequence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    degree: int = Field(1, ge=1, le=64, description="Ranks per group (one device each).")
    attention: Literal["ulysses", "ring"] = Field("ulysses", description="Context-parallel attention scheme.")
    collective_timeout_s: float = Field(
        120.0, gt=0, description="A collective that waits longer (e.g. on a dead rank) fails the call."
    )


class StitchConfig(BaseModel):
    """How segments become one video file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    curve: Literal["linear", "cosine"] = Field("linear", description="Crossfade curve over each overlap.")
    codec: str = Field("libx264", description="ffmpeg video encoder.")
    crf: int = Field(18, ge=0, le=51, description="Constant rate factor for x264/x265 (lower is better).")
    color_correction: bool = Field(
        True,
        description="Match each segment's per-channel mean and spread in its overlap to the previous segment's "
        "(in chain mode; keyframes and bridge modes are anchored to their keyframes and do not drift).",
    )

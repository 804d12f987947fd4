"""Model presets: what a checkpoint can do and how to load it (configs/presets/*.yaml).

This module imports neither torch nor diffusers, so the planner can use presets freely.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ContinuityMode = Literal["chain", "keyframes", "bridge"]


class Preset(BaseModel):
    """A model preset: checkpoints, sampling defaults and the constraints segments must obey."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Preset name, as given to --preset.")
    family: str = Field(description="Model family, e.g. 'wan'.")
    description: str = Field("", description="One line for `minutereel presets`.")
    i2v_model: str = Field(description="I2V checkpoint: hub id, local directory or embedded://NAME.")
    i2v_pipeline: str = Field(description="diffusers pipeline class of the I2V checkpoint.")
    t2i_model: str = Field(description="Keyframe (T2I) checkpoint: hub id, local directory or embedded://NAME.")
    t2i_pipeline: str = Field(description="diffusers pipeline class of the T2I checkpoint.")
    t2i_shares: tuple[str, ...] = Field(
        (), description="Components the T2I pipeline borrows from the loaded I2V pipeline (e.g. vae)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Compute dtype.")
    steps: int = Field(ge=1, description="Default denoising steps.")
    guidance: float = Field(ge=0.0, description="Default guidance scale (1.0 means no CFG).")
    frame_modulus: int = Field(ge=1, description="Segment lengths satisfy num_frames % modulus == remainder.")
    frame_remainder: int = Field(ge=0, description="See frame_modulus.")
    max_frames: int = Field(ge=1, description="Longest segment the model renders, in frames.")
    native_fps: int = Field(ge=1, description="Frame rate the model was trained at.")
    spatial_multiple: int = Field(ge=1, description="Width and height must be multiples of this, in pixels.")
    max_area: int = Field(ge=1, description="Largest width * height in pixels the preset renders.")
    default_width: int = Field(ge=1, description="Default width in pixels.")
    default_height: int = Field(ge=1, description="Default height in pixels.")
    supports_last_frame: bool = Field(description="Whether the I2V model takes a last-frame condition.")
    quantize_components: tuple[str, ...] = Field((), description="Pipeline components int8 quantizes.")
    sp_backend: Literal["diffusers", "xfuser"] = Field("diffusers", description="Sequence-parallel backend.")

    @model_validator(mode="after")
    def _check_frame_rule(self) -> Preset:
        if self.frame_remainder >= self.frame_modulus:
            raise ValueError(f"frame_remainder {self.frame_remainder} must be below frame_modulus {self.frame_modulus}")
        if not self.is_valid_length(self.max_frames):
            raise ValueError(f"max_frames {self.max_frames} breaks the preset's own frame rule")
        for name in ("default_width", "default_height"):
            if getattr(self, name) % self.spatial_multiple:
                raise ValueError(f"{name} must be a multiple of spatial_multiple {self.spatial_multiple}")
        return self

    @property
    def modes(self) -> tuple[ContinuityMode, ...]:
        """Continuity modes this preset can render."""
        return ("chain", "keyframes", "bridge") if self.supports_last_frame else ("chain",)

    def is_valid_length(self, num_frames: int) -> bool:
        return num_frames % self.frame_modulus == self.frame_remainder


def preset_names() -> list[str]:
    """Names of every preset shipped in configs/presets/."""
    folder = resources.files("configs") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


@cache
def load_preset(name: str) -> Preset:
    """Load a shipped preset by name; an unknown name raises ValueError listing the known ones."""
    known = preset_names()
    if name not in known:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    text = (resources.files("configs") / "presets" / f"{name}.yaml").read_text()
    return Preset.model_validate(yaml.safe_load(text))

"""Model presets: what a checkpoint can do and how to load it (configs/presets/*.yaml).

This module imports neither torch nor diffusers, so the planner can use presets freely.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ContinuityMode = Literal["chain", "keyframes", "bridge"]

EMBEDDED_PREFIX = "embedded://"
# Version of the embedded checkpoints that pipeline/tiny.py builds (its cache folder is tiny-VERSION). Bump it
# when that module's architecture or initialisation changes: old caches are then ignored, and jobs rendered
# with them are not resumed with the new weights. Kept here, free of torch, so plans can name it.
TINY_VERSION = "v5"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def weights_id(preset: Preset, quantize: str, loras: tuple[LoraSpec, ...] = ()) -> str:
    """What a render's frames depend on besides its plan: the checkpoints (an embedded one with the
    version of the code that builds it), their dtype, the quantization and the LoRAs fused into them
    (the preset's, then `loras`). Frames made under two ids do not mix."""
    def named(model: str) -> str:
        return f"{model}@{TINY_VERSION}" if checkpoint_kind(model) == "embedded" else model

    weights = f"i2v={named(preset.i2v_model)} t2i={named(preset.t2i_model)} dtype={preset.dtype} quantize={quantize}"
    fused = (*preset.loras, *loras)
    return f"{weights} loras={','.join(lora.label for lora in fused)}" if fused else weights


def checkpoint_kind(model: str) -> Literal["embedded", "local", "hub"]:
    """How a preset names a checkpoint: `embedded://NAME`, an absolute directory, or a hub id `owner/name`."""
    if model.startswith(EMBEDDED_PREFIX):
        return "embedded"
    if Path(model).is_absolute():
        return "local"
    if HUB_ID.fullmatch(model):
        return "hub"
    raise ValueError(f"checkpoint {model!r} is neither a hub id (owner/name), an absolute directory nor embedded://NAME")


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes


class LoraSpec(BaseModel):
    """A LoRA fused into one of the I2V pipeline's transformers before quantization and sequence parallelism."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        description="Hub repository `owner/name`, or the absolute path of a .safetensors file or of a directory "
                    "holding one."
    )
    weight_name: str | None = Field(
        None, description=f"File inside the repository or directory; None: {LORA_WEIGHT_NAME}."
    )
    scale: float = Field(1.0, ge=-10.0, le=10.0, description="Strength it is fused at (1.0: as trained).")
    target: Literal["transformer", "transformer_2"] = Field(
        "transformer", description="Transformer it goes into: `transformer_2` is Wan 2.2's low-noise expert."
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if not (Path(value).is_absolute() or HUB_ID.fullmatch(value)):
            raise ValueError(f"LoRA source {value!r} is neither a hub id (owner/name) nor an absolute path")
        return value

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_absolute()

    @property
    def label(self) -> str:
        """`source[/weight_name]*scale[>transformer_2]`: how the LoRA is named in a job's weights id."""
        name = f"{self.source}/{self.weight_name}" if self.weight_name else self.source
        return f"{name}*{self.scale:g}" + (f">{self.target}" if self.target != "transformer" else "")

    @classmethod
    def parse(cls, text: str, cwd: Path | None = None) -> LoraSpec:
        """`PATH_OR_ID[:SCALE]` as given to --lora: a local .safetensors file or directory (relative to `cwd`), or
        a hub id `owner/name` optionally followed by the file's path in the repository."""
        source, scale = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", tail, re.IGNORECASE):
            source, scale = head, float(tail)
        local = (cwd or Path.cwd()) / source
        if _exists(local) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(/[^:]+)?", source):
            return cls(source=str(local.resolve()), scale=scale)
        owner, name, *rest = source.split("/")
        return cls(source=f"{owner}/{name}", weight_name="/".join(rest) or None, scale=scale)


def parse_loras(value):
    """A pydantic before-validator: `loras` given as a list whose items may be --lora strings `PATH_OR_ID[:SCALE]`."""
    if isinstance(value, list | tuple):
        return tuple(LoraSpec.parse(v) if isinstance(v, str) else v for v in value)
    return value


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long or holding a NUL byte names nothing
        return False


class ModelSize(BaseModel):
    """What the GPU-memory estimate needs to know about a preset's models, without loading them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    i2v_params: dict[str, float] = Field(description="Parameters of each I2V pipeline component (count).")
    t2i_params: dict[str, float] = Field(
        description="Parameters of each T2I pipeline component the I2V pipeline does not lend it (count)."
    )
    hidden_dim: int = Field(ge=1, description="Width of the I2V transformer's token stream.")
    ffn_dim: int = Field(ge=1, description="Width of the I2V transformer's feed-forward layer.")


class Preset(BaseModel):
    """A model preset: checkpoints, sampling defaults and the constraints segments must obey."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Preset name, as given to --preset.")
    family: str = Field(description="Model family, e.g. 'wan'.")
    description: str = Field("", description="One line for `minutereel presets`.")
    i2v_model: str = Field(description="I2V checkpoint: hub id, absolute local directory or embedded://NAME.")
    i2v_pipeline: str = Field(description="diffusers pipeline class of the I2V checkpoint.")
    t2i_model: str = Field(description="Keyframe (T2I) checkpoint: hub id, absolute local directory or embedded://NAME.")
    t2i_pipeline: str = Field(description="diffusers pipeline class of the T2I checkpoint (a video or image pipeline).")
    t2i_shares: tuple[str, ...] = Field(
        (), description="Components the T2I pipeline borrows from the loaded I2V pipeline (e.g. vae)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Compute dtype.")
    steps: int = Field(ge=1, description="Default denoising steps.")
    guidance: float = Field(ge=0.0, description="Default guidance scale (1.0 means no CFG).")
    t2i_steps: int | None = Field(
        None, ge=1, description="Keyframe denoising steps; None: the I2V's (a T2I model of the same family)."
    )
    t2i_guidance: float | None = Field(
        None, ge=0.0, description="Keyframe guidance scale; None: the I2V's (a T2I model of the same family)."
    )
    max_sequence_length: int | None = Field(
        None, ge=1, description="Prompt tokens the I2V model reads; None: its pipeline's default."
    )
    t2i_max_sequence_length: int | None = Field(
        None, ge=1, description="Prompt tokens the T2I model reads; None: its pipeline's default."
    )
    frame_modulus: int = Field(ge=1, description="Segment lengths satisfy num_frames % modulus == remainder.")
    frame_remainder: int = Field(ge=0, description="See frame_modulus.")
    max_frames: int = Field(ge=1, description="Longest segment the model renders, in frames.")
    native_fps: int = Field(ge=1, description="Frame rate the model was trained at.")
    spatial_multiple: int = Field(
        ge=1, description="Width and height must be multiples of this, in pixels (VAE stride x patch size)."
    )
    max_area: int = Field(ge=1, description="Largest width * height in pixels the preset renders.")
    resolution_buckets: tuple[tuple[int, int], ...] = Field(
        min_length=1, description="Sizes [width, height] in pixels the model was trained at."
    )
    default_width: int = Field(ge=1, description="Default width in pixels.")
    default_height: int = Field(ge=1, description="Default height in pixels.")
    supports_last_frame: bool = Field(description="Whether the I2V model takes a last-frame condition.")
    requires_last_frame: bool = Field(
        False, description="Whether every segment must have a last frame too (a model trained only on first-last "
                           "pairs, whose image embedding has positions for two frames): keyframes mode only."
    )
    pin_conditioned_frames: bool = Field(
        False,
        description="Replace the conditioned latent frames with the encoded first/last image after every "
        "denoising step (as Wan 2.2 TI2V does for its first frame), so the decoded frames are the conditions. "
        "For a model that honours its conditioning only approximately (the tiny one, whose keyframes must "
        "land exactly for the tests); large trained I2V models leave this off.",
    )
    scheduler: Literal["checkpoint", "few_step_euler"] = Field(
        "checkpoint",
        description="The I2V sampler: the checkpoint's own, or few_step_euler (pipeline/schedulers.py: Euler on the "
        "evenly spaced sigmas 1, 1 - 1/steps, ..., 1/steps, shifted by flow_shift), the grid step-distilled models "
        "are trained on.",
    )
    flow_shift: float | None = Field(None, gt=0, description="Sigma shift of few_step_euler (e.g. 5 for Wan).")
    loras: tuple[LoraSpec, ...] = Field(
        (), description="LoRAs fused into the I2V transformers at load, before quantization (e.g. step distillation)."
    )
    quantize_components: tuple[str, ...] = Field((), description="I2V pipeline components int8 quantizes.")
    t2i_quantize_components: tuple[str, ...] = Field(
        (), description="T2I pipeline components int8 quantizes (borrowed ones are quantized with the I2V's)."
    )
    vocabulary: tuple[str, ...] = Field(
        (), description="The only prompt words the model knows (others are ignored); empty: an open vocabulary."
    )
    sp_backend: Literal["diffusers", "none"] = Field(
        "diffusers",
        description="Sequence parallelism: diffusers' context parallelism (the transformer's own plan), or none "
        "(a transformer diffusers cannot shard exactly: --sp-degree 1 only; the YAML says why).",
    )
    size: ModelSize = Field(description="Parameter counts and transformer widths, for `minutereel presets`.")

    @field_validator("i2v_model", "t2i_model")
    @classmethod
    def _check_checkpoint(cls, value: str) -> str:
        checkpoint_kind(value)
        return value

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

    @model_validator(mode="after")
    def _check_buckets(self) -> Preset:
        for width, height in self.resolution_buckets:
            if width % self.spatial_multiple or height % self.spatial_multiple:
                raise ValueError(f"resolution bucket {width}x{height} is not a multiple of {self.spatial_multiple}")
            if width * height > self.max_area:
                raise ValueError(f"resolution bucket {width}x{height} is over max_area {self.max_area}")
        if (self.default_width, self.default_height) not in self.resolution_buckets:
            raise ValueError(
                f"default size {self.default_width}x{self.default_height} is not one of the resolution_buckets"
            )
        return self

    @model_validator(mode="after")
    def _check_sizes(self) -> Preset:
        for component in self.quantize_components:
            if component not in self.size.i2v_params:
                raise ValueError(f"quantize_components names {component!r}, which size.i2v_params does not list")
        for component in self.t2i_quantize_components:
            if component not in self.size.t2i_params:
                raise ValueError(f"t2i_quantize_components names {component!r}, which size.t2i_params does not list")
        return self

    @model_validator(mode="after")
    def _check_sampler(self) -> Preset:
        if self.requires_last_frame and not self.supports_last_frame:
            raise ValueError("requires_last_frame needs supports_last_frame")
        if (self.scheduler == "few_step_euler") != (self.flow_shift is not None):
            raise ValueError("flow_shift is set exactly when scheduler is few_step_euler")
        for lora in self.loras:
            if lora.target not in self.size.i2v_params:
                raise ValueError(f"LoRA {lora.label} targets {lora.target!r}, which size.i2v_params does not list")
        return self

    @property
    def modes(self) -> tuple[ContinuityMode, ...]:
        """Continuity modes this preset can render."""
        if self.requires_last_frame:
            return ("keyframes",)
        return ("chain", "keyframes", "bridge") if self.supports_last_frame else ("chain",)

    def keyframe_sampling(self, steps: int, guidance: float) -> tuple[int, float]:
        """(steps, guidance) of the keyframe (T2I) model for a render sampling its I2V with `steps` and `guidance`:
        the preset's own keyframe sampling where it has one (a distilled FLUX.1-schnell), else the same."""
        return (self.t2i_steps or steps, guidance if self.t2i_guidance is None else self.t2i_guidance)

    def is_valid_length(self, num_frames: int) -> bool:
        return num_frames % self.frame_modulus == self.frame_remainder


def is_preset_file(name: str) -> bool:
    """Whether --preset names a YAML file (`./studio.yaml`) rather than a shipped preset (`wan2.1-i2v-480p`)."""
    return name.endswith((".yaml", ".yml"))


def preset_path(name: str) -> Path:
    """The YAML file of a preset: a shipped one's by name, or the file given (edit it to point a checkpoint at a
    local directory)."""
    if is_preset_file(name):
        return Path(name)
    return Path(str(resources.files("configs") / "presets" / f"{name}.yaml"))


def preset_names() -> list[str]:
    """Names of every preset shipped in configs/presets/."""
    folder = resources.files("configs") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


@cache
def load_preset(name: str) -> Preset:
    """Load a shipped preset by name, or a preset YAML file by its path (ending .yaml or .yml; give it absolute
    where Ray workers on other machines load it). An unknown name or an unreadable or invalid file raises one
    ValueError saying which."""
    if is_preset_file(name):
        try:
            fields = yaml.safe_load(Path(name).read_text())
            return Preset.model_validate(fields)
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"preset file {name}: cannot be read: {err}") from err
        except ValidationError as err:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"preset file {name}: {details}") from err
    known = preset_names()
    if name not in known:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(known)} (or a YAML file's path)")
    return Preset.model_validate(yaml.safe_load(preset_path(name).read_text()))

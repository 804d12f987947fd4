"""EngineConfig: the root config, made of the model, parallel and stitch sub-configs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from actors.config import ParallelConfig
from pipeline.config import ModelConfig, StitchConfig


class EngineConfig(BaseModel):
    """Everything a RenderEngine needs; built once at the edge (CLI, Serve, batch) and passed down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig = Field(default_factory=ModelConfig, description="Preset and quantization.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Pool shape and devices.")
    stitch: StitchConfig = Field(default_factory=StitchConfig, description="Blending and encoding.")
    ray_address: str | None = Field(
        None, description="Ray cluster to attach to; None starts a local cluster sized to this machine."
    )

"""ParallelConfig: how many shard groups, how wide each is, and what each rank asks Ray for."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ParallelConfig(BaseModel):
    """Pool shape: `workers` shard groups of `sp_degree` ranks each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int | None = Field(
        None, ge=1, description="Shard groups in the pool (default: as many as the cluster's devices allow)."
    )
    sp_degree: int = Field(1, ge=1, description="Ranks per group, i.e. the sequence-parallel degree.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: one GPU per rank when the cluster has GPUs, else CPU slots."
    )
    cpus_per_rank: int = Field(1, ge=1, description="CPU cores Ray reserves for each rank (its torch threads).")
    placement_timeout_s: float = Field(120.0, gt=0, description="How long to wait for a group's placement group.")

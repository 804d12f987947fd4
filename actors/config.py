"""ParallelConfig: how many shard groups, how wide each is, and what each rank asks Ray for."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import SequenceParallelConfig


class ParallelConfig(BaseModel):
    """Pool shape: `workers` shard groups of `sequence.degree` ranks each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int | None = Field(
        None, ge=1, description="Shard groups in the pool (default: as many as the cluster's devices allow)."
    )
    sequence: SequenceParallelConfig = Field(
        default_factory=SequenceParallelConfig, description="Ranks per group and how they split attention."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: one GPU per rank when the cluster has GPUs, else CPU slots."
    )
    cpus_per_rank: int = Field(1, ge=1, description="CPU cores Ray reserves for each rank (its torch threads).")
    placement_timeout_s: float = Field(120.0, gt=0, description="How long to wait for a group's placement group.")
    load_timeout_s: float = Field(
        1800.0, gt=0, description="How long a placed group's ranks may take to initialise, load the model and warm "
                                  "up before the start counts as failed (a hung rank) and is started again."
    )
    task_timeout_s: float = Field(
        900.0, gt=0, description="A keyframe or segment running longer is stopped, its group rebuilt, and retried."
    )
    group_restarts: int = Field(
        2, ge=0, description="Times in a row a shard group that fails to start (a rank died, its load failed) is "
                             "started again before the pool gives that group up."
    )
    task_retries: int = Field(
        2, ge=0, description="Times a keyframe or segment is re-run on a rebuilt group after its group fails."
    )

    @property
    def sp_degree(self) -> int:
        return self.sequence.degree

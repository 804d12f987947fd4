"""Run as a script: a Ray cluster that declares two logical GPUs (no hardware) places a degree-2
shard group and prints what each rank chose. Touches no CUDA API."""

import json
import os

import ray

from actors.config import ParallelConfig
from actors.pool import cluster_devices
from actors.shard import ShardGroup
from pipeline.config import ModelConfig, SequenceParallelConfig


def _visible(rank):
    return os.environ.get("CUDA_VISIBLE_DEVICES")


if __name__ == "__main__":
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    parallel = ParallelConfig(sequence=SequenceParallelConfig(degree=2))
    use_gpu, groups = cluster_devices(parallel)
    group = ShardGroup(0, ModelConfig(), parallel, use_gpu=use_gpu)
    ranks = [health.as_dict() for health in ray.get(group.call("init_device"))]
    visible = ray.get(group.call("execute", _visible))
    group.shutdown()
    print(json.dumps({"use_gpu": use_gpu, "groups": groups, "ranks": ranks, "visible": visible}))

"""Sequence-parallel backend selection that needs no process group."""

import pytest
import torch

from pipeline.config import SequenceParallelConfig
from pipeline.parallel import check_sequence_parallel, collective_backend, enable_sequence_parallel
from pipeline.presets import load_preset


def test_a_preset_without_a_context_parallel_plan_is_degree_one_only():
    preset = load_preset("hunyuanvideo-i2v")
    check_sequence_parallel(preset.name, preset.sp_backend, 1)
    with pytest.raises(ValueError, match="'hunyuanvideo-i2v' renders at --sp-degree 1 only"):
        check_sequence_parallel(preset.name, preset.sp_backend, 2)
    with pytest.raises(ValueError, match="sp_backend 'none' cannot shard a transformer"):
        enable_sequence_parallel([torch.nn.Linear(2, 2)], SequenceParallelConfig(degree=2), "none", "cpu")


def test_degree_one_leaves_the_model_alone():
    model = torch.nn.Linear(2, 2)
    enable_sequence_parallel([model], SequenceParallelConfig(degree=1), "none", "cpu")
    assert not hasattr(model, "_parallel_config")


def test_backend_follows_device():
    assert (collective_backend("cuda:0"), collective_backend("cpu")) == ("nccl", "gloo")

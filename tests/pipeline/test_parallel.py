"""Sequence-parallel backend selection that needs no process group."""

import pytest
import torch

from pipeline.config import SequenceParallelConfig
from pipeline.parallel import collective_backend, enable_sequence_parallel


def test_xfuser_on_a_cpu_host_says_it_needs_cuda():
    with pytest.raises(ValueError, match="xfuser.*needs CUDA GPUs.*cannot even be imported"):
        enable_sequence_parallel(torch.nn.Linear(2, 2), SequenceParallelConfig(degree=2), "xfuser", "cpu")


def test_degree_one_leaves_the_model_alone():
    model = torch.nn.Linear(2, 2)
    enable_sequence_parallel(model, SequenceParallelConfig(degree=1), "xfuser", "cpu")
    assert not hasattr(model, "_parallel_config")


def test_backend_follows_device():
    assert (collective_backend("cuda:0"), collective_backend("cpu")) == ("nccl", "gloo")

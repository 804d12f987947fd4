"""The few-step sampler of the distilled presets: the lightx2v / Lightning / Magic 1-For-1 4-step grid."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pipeline.schedulers import FewStepFlowMatchEulerScheduler, few_step_scheduler


def test_four_steps_at_shift_5_give_the_distilled_grid():
    scheduler = few_step_scheduler({"num_train_timesteps": 1000}, shift=5.0)
    scheduler.set_timesteps(4)
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]), rtol=0, atol=1e-3)
    # Wan 2.2's boundary_ratio 0.9 sends timesteps >= 900 to the high-noise expert: two steps each.
    assert (scheduler.timesteps >= 900).sum() == 2


def test_the_stock_scheduler_wastes_the_last_of_four_steps():
    stock = FlowMatchEulerDiscreteScheduler(shift=5.0)
    stock.set_timesteps(4)
    assert stock.sigmas[3] < 0.03  # what the few-step grid replaces: a last step that barely moves


def test_euler_steps_walk_the_grid_to_the_clean_sample():
    """With a perfect velocity (noise - x0) each Euler step lands on the grid's interpolant, the last on x0."""
    scheduler = FewStepFlowMatchEulerScheduler(shift=5.0)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 8, generator=generator), torch.randn(2, 8, generator=generator)
    sample = noise
    for t in scheduler.timesteps:
        sample = scheduler.step(noise - clean, t, sample).prev_sample
    torch.testing.assert_close(sample, clean, rtol=0, atol=1e-5)


def test_steps_must_be_given():
    with pytest.raises(ValueError, match="num_inference_steps must be at least 1"):
        FewStepFlowMatchEulerScheduler().set_timesteps()

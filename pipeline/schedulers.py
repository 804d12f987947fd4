"""The sampler of step-distilled flow models: Euler on an evenly spaced, shifted sigma grid.

The lightx2v and Wan2.2-Lightning 4-step LoRAs (and Magic 1-For-1's 4-step model) are trained on the timesteps
1000, 750, 500, 250 shifted by 5: sigmas 1, 0.9375, 0.8333, 0.625, then 0. diffusers' stock
FlowMatchEulerDiscreteScheduler spaces n steps from sigma 1 down to the shifted sigma of timestep 1, which at 4
steps and shift 5 gives 1, 0.910, 0.717, 0.024: a last step that barely moves. This scheduler takes the grid
1, 1 - 1/n, ..., 1/n for n steps instead (the one the distilled models saw) and shifts it the same way.
"""

from __future__ import annotations

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler


class FewStepFlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """FlowMatchEulerDiscreteScheduler whose `set_timesteps(n)` samples sigmas shift(1, 1 - 1/n, ..., 1/n), then 0."""

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None,
                      timesteps=None):
        if sigmas is None and timesteps is None:
            if num_inference_steps is None or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu,
                              timesteps=timesteps)


def few_step_scheduler(config: dict, shift: float) -> FewStepFlowMatchEulerScheduler:
    """The few-step sampler for a checkpoint whose scheduler config is `config` (its training timesteps kept)."""
    return FewStepFlowMatchEulerScheduler(
        num_train_timesteps=config.get("num_train_timesteps", 1000), shift=shift,
    )

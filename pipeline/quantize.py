"""int8 weight-only quantization with optimum-quanto."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def quantize_int8(pipe, components: tuple[str, ...]) -> list[str]:
    """Quantize the named pipeline components to qint8 weights (activations stay in the compute
    dtype) and freeze them, so the float weights are dropped. Returns the components quantized."""
    from optimum.quanto import freeze, qint8, quantize

    done = []
    for name in components:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"preset lists component {name!r} to quantize, but the pipeline has no such module")
        quantize(module, weights=qint8)
        freeze(module)
        done.append(name)
    logger.info("quantized %s to qint8", ", ".join(done))
    return done

"""int8 (optimum-quanto qint8, weight-only, frozen) on the preset's listed components."""

import numpy as np
import pytest
import torch
from optimum.quanto import QLinear, qint8
from optimum.quanto.tensor import QBytesTensor

from pipeline.config import ModelConfig
from pipeline.generate import SegmentGenerator, SegmentRequest


@pytest.fixture(scope="module")
def generators(tiny_cache):
    torch.set_num_threads(1)
    return {q: SegmentGenerator(ModelConfig(cache_dir=tiny_cache, quantize=q), torch.device("cpu"))
            for q in ("none", "int8")}


def _psnr(a, b):
    """PSNR over the whole clip, in dB (finite unless every frame is equal)."""
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_listed_components_hold_frozen_int8_weights(generators):
    quantized = generators["int8"]
    assert quantized.quantized == ["transformer", "text_encoder"]
    for name in ("transformer", "text_encoder"):
        linears = [m for m in getattr(quantized.i2v, name).modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(isinstance(m, QLinear) for m in linears), name
        for module in linears:
            assert module.weight_qtype == qint8
            assert isinstance(module.weight, QBytesTensor)  # frozen: float weights dropped
            assert module.weight._data.dtype == torch.int8
    # The keyframe pipeline has a text encoder of its own; it quantizes both its listed components.
    assert quantized.t2i.text_encoder is not quantized.i2v.text_encoder
    for module in (quantized.t2i.transformer, quantized.t2i.text_encoder):
        assert all(isinstance(m, QLinear) for m in module.modules() if isinstance(m, torch.nn.Linear))
    assert not any(isinstance(m, QLinear) for m in generators["none"].i2v.transformer.modules())


def test_int8_output_stays_close_to_float(generators):
    right, left = "a red ball moving right on a blue background", "a red ball moving left on a blue background"
    first = generators["none"].keyframe(right, 1, 128, 128)
    request = SegmentRequest(right, 2, 33, 128, 128, first)
    reference = generators["none"].segment(request)
    quantized = generators["int8"].segment(request)
    other_way = generators["none"].segment(SegmentRequest(left, 2, 33, 128, 128, first))
    # Frame 0 is the conditioning image, pinned in every render: compare the frames the model made.
    np.testing.assert_array_equal(reference[0], quantized[0])
    close, unrelated = _psnr(reference[1:], quantized[1:]), _psnr(reference[1:], other_way[1:])
    assert close >= 30, f"int8 vs float: {close:.1f} dB"
    assert close >= unrelated + 5, f"int8 {close:.1f} dB is not much closer than going left ({unrelated:.1f} dB)"

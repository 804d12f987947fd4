"""The embedded tiny preset: save/load round trip and visibly varying output."""

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.generate import SegmentGenerator, SegmentRequest
from pipeline.tiny import build_tiny_pipelines, ensure_tiny_checkpoints


@pytest.fixture(scope="module")
def generator(tiny_cache):
    torch.set_num_threads(1)
    return SegmentGenerator(ModelConfig(cache_dir=tiny_cache), torch.device("cpu"))


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_save_load_round_trip_is_exact(tiny_cache, generator):
    built_i2v, built_t2i = build_tiny_pipelines()
    for name in ("transformer", "vae", "text_encoder"):
        built, loaded = _state(getattr(built_i2v, name)), _state(getattr(generator.i2v, name))
        assert built.keys() == loaded.keys(), name
        for key in built:
            assert torch.equal(built[key], loaded[key]), f"{name}.{key} changed in save/load"
    for key, value in _state(built_t2i.transformer).items():
        assert torch.equal(value, generator.t2i.transformer.state_dict()[key]), key
    # The in-memory pipeline and the loaded one render the same keyframe.
    frames = [
        pipe(prompt="a fox", height=32, width=32, num_frames=1, num_inference_steps=2, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(3), output_type="np").frames[0][0]
        for pipe in (built_t2i, generator.t2i)
    ]
    np.testing.assert_allclose(frames[0], frames[1], rtol=0, atol=1e-5)


def test_checkpoints_are_built_once(tiny_cache):
    path = ensure_tiny_checkpoints(tiny_cache)
    marker = path / "i2v" / "model_index.json"
    before = marker.stat().st_mtime_ns
    assert ensure_tiny_checkpoints(tiny_cache) == path
    assert marker.stat().st_mtime_ns == before


def test_keyframe_depends_on_prompt_and_seed(generator):
    a = generator.keyframe("a fox", 1, 64, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, generator.keyframe("a fox", 1, 64, 64))
    assert np.abs(a.astype(int) - generator.keyframe("a fox", 2, 64, 64)).mean() > 5
    assert np.abs(a.astype(int) - generator.keyframe("a whale", 1, 64, 64)).mean() > 1


def test_segment_frames_vary_in_space_and_time(generator):
    first = generator.keyframe("a fox", 1, 64, 64)
    frames = generator.segment(SegmentRequest("a fox", 5, 17, 64, 64, first, first))
    assert frames.shape == (17, 64, 64, 3) and frames.dtype == np.uint8
    spatial = frames.reshape(17, -1, 3).astype(float).std(axis=1).mean(axis=1)
    assert spatial.min() > 10, f"a frame is nearly flat: spatial std {spatial.min():.1f}"
    steps = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert steps.min() > 2, f"two consecutive frames are nearly equal: mean step {steps.min():.1f} levels"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def _last_frame(video: torch.Tensor) -> np.ndarray:
    """The last frame of a decoded (1, 3, frames, h, w) video in [-1, 1], as uint8 (h, w, 3)."""
    return video[0, :, -1].permute(1, 2, 0).add(1).mul(127.5).round().numpy().astype(np.uint8)


def test_vae_encodes_a_decoded_frame_back_to_itself(generator):
    """The hand-set tiny VAE: decode(encode(frame)) is the frame, as a first frame and as a chunk's last."""
    vae = generator.i2v.vae
    keyframe = generator.keyframe("a fox", 1, 64, 64)
    pixels = torch.from_numpy(keyframe).float().div(127.5).sub(1).permute(2, 0, 1)[None, :, None]
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mode()
        again = vae.decode(latent).sample.clamp(-1, 1)
        # The same latent as the last of three latent frames decodes to the same picture (the VAE is
        # causal: the frames before it must not leak into a chunk's last frame).
        noise = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
        video = vae.decode(torch.cat([noise * 2, latent], dim=2)).sample.clamp(-1, 1)
    assert _psnr(_last_frame(again), keyframe) >= 45
    assert _psnr(_last_frame(video), keyframe) >= 45
    assert video.shape[2] == 9 and _psnr(_last_frame(video[:, :, :-1]), keyframe) < 30


def test_conditioned_frames_are_the_conditions(generator):
    first, last = generator.keyframe("a fox", 1, 64, 64), generator.keyframe("a whale", 2, 64, 64)
    frames = generator.segment(SegmentRequest("a fox", 5, 17, 64, 64, first, last))
    assert _psnr(frames[0], first) >= 40 and _psnr(frames[-1], last) >= 40
    assert max(_psnr(frame, image) for frame in frames[2:-2] for image in (first, last)) < 30

"""The embedded tiny preset: shipped weights, the hand-set VAE, and a model that follows its prompt."""

import json

import numpy as np
import pytest
import torch

from pipeline import world
from pipeline.config import ModelConfig
from pipeline.generate import SegmentGenerator, SegmentRequest
from pipeline.tiny import WEIGHTS, _vae, build_tiny_pipelines, ensure_tiny_checkpoints

RED_RIGHT = "a red ball moving right on a blue background"  # a combination held out of training


@pytest.fixture(scope="module")
def generator(tiny_cache):
    torch.set_num_threads(1)
    return SegmentGenerator(ModelConfig(cache_dir=tiny_cache), torch.device("cpu"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _config(module) -> dict:
    config = module.config
    return dict(config) if isinstance(config, dict) else config.to_dict()  # diffusers | transformers


def test_loaded_checkpoints_are_the_shipped_architecture_and_vae(generator):
    built_i2v, built_t2i = build_tiny_pipelines()
    for built, loaded in ((built_i2v, generator.i2v), (built_t2i, generator.t2i)):
        for name in ("transformer", "text_encoder"):
            expected = {k: v for k, v in _config(getattr(built, name)).items()
                        if not k.startswith("_") and k not in ("dtype", "architectures")}
            got = {k: _config(getattr(loaded, name))[k] for k in expected}
            assert json.loads(json.dumps(got)) == json.loads(json.dumps(expected)), name  # tuples vs lists
            assert getattr(built, name).state_dict().keys() == getattr(loaded, name).state_dict().keys(), name
    # The VAE is not trained: the shipped one is exactly the hand-set one.
    for key, value in _vae().state_dict().items():
        assert torch.equal(value, generator.i2v.vae.state_dict()[key]), key
    # Trained: the transformers are not their seeded initialisation.
    built = built_i2v.transformer.state_dict()
    assert any(not torch.equal(built[k], v) for k, v in generator.i2v.transformer.state_dict().items())


def test_save_load_round_trip_is_exact(generator, tmp_path):
    generator.t2i.save_pretrained(tmp_path / "t2i")
    again = type(generator.t2i).from_pretrained(tmp_path / "t2i")
    for name in ("transformer", "text_encoder"):
        for key, value in getattr(again, name).state_dict().items():
            assert torch.equal(value, getattr(generator.t2i, name).state_dict()[key]), f"{name}.{key}"
    frames = [
        pipe(prompt=RED_RIGHT, height=128, width=128, num_frames=1, num_inference_steps=2, guidance_scale=1.0,
             max_sequence_length=64, generator=torch.Generator().manual_seed(3), output_type="np").frames[0][0]
        for pipe in (again, generator.t2i)
    ]
    np.testing.assert_allclose(frames[0], frames[1], rtol=0, atol=1e-5)


def test_checkpoints_are_copied_once(tiny_cache):
    path = ensure_tiny_checkpoints(tiny_cache)
    marker = path / "i2v" / "model_index.json"
    before = marker.stat().st_mtime_ns
    assert ensure_tiny_checkpoints(tiny_cache) == path
    assert marker.stat().st_mtime_ns == before
    assert (WEIGHTS / "i2v" / "transformer").is_dir()


def test_missing_shipped_weights_say_how_to_train_them(tmp_path):
    with pytest.raises(RuntimeError, match="python -m pipeline.train_tiny"):
        ensure_tiny_checkpoints(tmp_path / "cache", weights=tmp_path / "nowhere")


def test_keyframe_draws_the_prompts_background(generator):
    a = generator.keyframe(RED_RIGHT, 1, 128, 128)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, generator.keyframe(RED_RIGHT, 1, 128, 128))
    for colour in ("blue", "green", "purple", "white"):
        image = generator.keyframe(f"a red ball moving right on a {colour} background", 1, 128, 128)
        assert world.background_colour(image) == colour


def test_keyframe_draws_the_prompts_objects_where_keyframes_put_them(generator):
    for prompt, colour, background in ((RED_RIGHT, "red", "blue"),
                                       ("a yellow square moving up on a purple background", "yellow", "purple"),
                                       ("a white ball moving left on a green background", "white", "green")):
        place = world.locate(generator.keyframe(prompt, 1, 128, 128), colour, background)
        assert place is not None and np.hypot(place[0] - 64, place[1] - 64) < 8, (prompt, place)


@pytest.mark.parametrize(("prompt", "colour", "background", "axis", "sign"), [
    (RED_RIGHT, "red", "blue", 0, 1),
    ("a yellow square moving down on a purple background", "yellow", "purple", 1, 1),
    ("a white triangle moving left on a green background", "white", "green", 0, -1),
    ("a green ball moving up on an orange background", "green", "orange", 1, -1),
])
def test_segment_moves_the_object_the_way_the_prompt_says(generator, prompt, colour, background, axis, sign):
    first = world.render_clip(world.scene_from_prompt(prompt), 1)[0]
    frames = generator.segment(SegmentRequest(prompt, 5, 33, 128, 128, first))
    assert frames.shape == (33, 128, 128, 3) and frames.dtype == np.uint8
    places = [world.locate(frame, colour, background) for frame in frames]
    assert all(place is not None for place in places), "the object vanished"
    moved = world.torus_delta(places[0][axis], places[-1][axis]) * sign
    across = abs(world.torus_delta(places[0][1 - axis], places[-1][1 - axis]))
    assert moved >= 10 and across < moved / 2, f"moved {moved:.1f} px along, {across:.1f} px across"
    steps = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (steps > 0).all(), "two consecutive frames are equal"


def _last_frame(video: torch.Tensor) -> np.ndarray:
    """The last frame of a decoded (1, 3, frames, h, w) video in [-1, 1], as uint8 (h, w, 3)."""
    return video[0, :, -1].permute(1, 2, 0).add(1).mul(127.5).round().numpy().astype(np.uint8)


def test_vae_encodes_a_decoded_frame_back_to_itself(generator):
    """The hand-set tiny VAE: decode(encode(frame)) is the frame, as a first frame and as a chunk's last."""
    vae = generator.i2v.vae
    keyframe = generator.keyframe(RED_RIGHT, 1, 128, 128)
    pixels = torch.from_numpy(keyframe).float().div(127.5).sub(1).permute(2, 0, 1)[None, :, None]
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mode()
        again = vae.decode(latent).sample.clamp(-1, 1)
        # The same latent as the last of three latent frames decodes to the same picture (the VAE is
        # causal: the frames before it must not leak into a chunk's last frame).
        noise = torch.randn(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
        video = vae.decode(torch.cat([noise * 2, latent], dim=2)).sample.clamp(-1, 1)
    assert latent.shape == (1, 3, 1, 32, 32)
    assert _psnr(_last_frame(again), keyframe) >= 45
    assert _psnr(_last_frame(video), keyframe) >= 45
    assert video.shape[2] == 9 and _psnr(_last_frame(video[:, :, :-1]), keyframe) < 30


def test_vae_latent_is_the_worlds_thumbnail():
    """Training renders latents with `world.thumbnails` instead of running the VAE: they must agree."""
    scene = world.random_scene(np.random.default_rng(3))
    clip = world.render_clip(scene, 21)
    pixels = torch.from_numpy(clip).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        latent = _vae().encode(pixels).latent_dist.mode()[0].numpy()
    expected = np.stack([world.thumbnail(frame) for frame in clip[world.latent_frames(21)]], axis=1)
    np.testing.assert_allclose(latent, expected, atol=2e-3)
    assert np.abs(world.thumbnails(scene, 21) - expected).mean() < 0.01  # 2x2 samples per cell, not 4x4


def test_conditioned_frames_are_the_conditions(generator):
    thing = world.Thing("red", "ball", "right", start=(30.0, 64.0), end=(98.0, 64.0))
    clip = world.render_clip(world.Scene("blue", (thing,)), 21)
    first, last = world.as_cells(clip[0]), world.as_cells(clip[-1])
    frames = generator.segment(SegmentRequest(RED_RIGHT, 5, 21, 128, 128, first, last))
    assert _psnr(frames[0], first) >= 40 and _psnr(frames[-1], last) >= 40
    assert max(_psnr(frame, image) for frame in frames[6:-6] for image in (first, last)) < 30

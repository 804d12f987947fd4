"""The tiny model's trainer: it trains on exactly what the pipeline feeds at inference, and it resumes."""

import numpy as np
import torch
from PIL import Image

from pipeline import world
from pipeline.tiny import build_tiny_pipelines
from pipeline.train_tiny import Trainer, condition


def _pipeline_condition(pipe, first: np.ndarray, last: np.ndarray | None, num_frames: int) -> torch.Tensor:
    def pixels(image):
        return pipe.video_processor.preprocess(Image.fromarray(image), height=128, width=128)

    with torch.no_grad():
        _, given = pipe.prepare_latents(pixels(first), 1, 3, 128, 128, num_frames, torch.float32, torch.device("cpu"),
                                        torch.Generator().manual_seed(0),
                                        last_image=None if last is None else pixels(last))
    return given[0]


def test_training_conditions_are_what_the_pipeline_builds():
    i2v, _ = build_tiny_pipelines()
    rng = np.random.default_rng(0)
    scene = world.with_path(world.random_scene(rng), rng)
    clip = world.render_clip(scene, 33)
    x0 = torch.from_numpy(np.stack([world.thumbnail(f) for f in clip[world.latent_frames(33)]], axis=1))
    for last in (False, True):
        mask, given = condition(x0, last)
        expected = _pipeline_condition(i2v, clip[0], clip[-1] if last else None, 33)
        torch.testing.assert_close(torch.cat([mask, given]), expected, atol=2e-3, rtol=0)


def test_training_resumes_where_it_stopped(tmp_path):
    torch.set_num_threads(1)
    trainer = Trainer(tmp_path)
    trainer.train(seconds=2.0)
    assert trainer.step >= 1 and (tmp_path / "state.pt").exists() and (tmp_path / "loss.jsonl").exists()
    again = Trainer(tmp_path)
    assert again.step == trainer.step
    for name, module in trainer.modules.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, again.modules[name].state_dict()[key]), f"{name}.{key}"
    assert again.rng.random() == trainer.rng.random()  # the data stream continues, not restarts


def test_t2i_stage_trains_only_the_keyframe_transformer(tmp_path):
    from pipeline.train_tiny import TOTAL_STEPS

    torch.set_num_threads(1)
    trainer = Trainer(tmp_path)
    trainer.step = TOTAL_STEPS
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in trainer.modules.items()}
    ema_before = [e.clone() for e in trainer.ema]
    trainer.train(seconds=2.0)
    assert trainer.step > TOTAL_STEPS
    for name, module in trainer.modules.items():
        same = all(torch.equal(a, b) for a, b in zip(before[name], module.parameters(), strict=True))
        assert same == (name != "t2i"), name
    first_t2i = len(before["i2v"])
    assert all(torch.equal(a, b) for a, b in zip(ema_before[:first_t2i], trainer.ema[:first_t2i], strict=True))


def test_degraded_conditions_keep_the_object_where_it_is():
    """`degrade` smears an object along its motion but leaves its centre (what the I2V must continue from)."""
    from pipeline.train_tiny import degrade

    rng = np.random.default_rng(1)
    thing = world.Thing("red", "square", "right", start=(60.0, 70.0))
    x0 = torch.from_numpy(world.thumbnails(world.Scene("blue", (thing,)), 1))[:, 0]
    background = torch.from_numpy(world.thumbnails(world.Scene("blue"), 1))[:, 0]
    changed = 0
    for _ in range(20):
        frame = degrade(x0, background, 2, rng)
        red = frame[0] - frame[2] > 0.0  # red over blue: the red channel above the blue one
        ys, xs = torch.nonzero(red, as_tuple=True)
        assert abs(xs.float().mean() * 4 + 2 - 60) < 4 and abs(ys.float().mean() * 4 + 2 - 70) < 4
        changed += not torch.allclose(frame, x0, atol=0.05)
    assert changed >= 15


def test_chain_stage_trains_only_the_i2v(tmp_path):
    from pipeline.train_tiny import STAGES

    torch.set_num_threads(1)
    trainer = Trainer(tmp_path)
    trainer.step = sum(stage.steps for stage in STAGES[:-1])
    assert trainer.stage.name == "chain"
    x0, _, given, _, _ = trainer.i2v_batch()
    torch.testing.assert_close(given[:, :, 0], x0[:, :, 0])  # the pinned frame is the target, degraded or not
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in trainer.modules.items()}
    trainer.train(seconds=2.0)
    for name, module in trainer.modules.items():
        same = all(torch.equal(a, b) for a, b in zip(before[name], module.parameters(), strict=True))
        assert same == (name != "i2v"), name

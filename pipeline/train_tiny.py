"""Train the embedded `tiny` model on the procedural world, in resumable chunks, on CPU.

    python -m pipeline.train_tiny --minutes 10        # one chunk; run again to continue
    python -m pipeline.train_tiny --export            # EMA weights -> pipeline/tiny_weights/

One loop trains the I2V transformer, the T2I transformer and the text encoder they share for
`TOTAL_STEPS`, then the T2I alone for `T2I_STEPS` on keyframes whose objects stand at the fixed
`world.KEYFRAME_PLACES` (sharp keyframes in few steps), then with a text encoder of its own for
`KEYFRAME_STEPS` (the shared one never had to name an object's colour: the I2V copies it from its
first frame), then `OBJECT_STEPS` more with the T2I's object cells weighted 9x, then `CHAIN_STEPS` of
the I2V alone whose conditioned frames are mostly `degrade`d (smeared, blurred, haloed, tinted: what
a chained segment or a keyframe hands it) while the frames after them stay clean, so that chained
segments stop widening their objects (`STAGES` is the table of it all). Each step
draws fresh scenes from `pipeline.world` and renders their latents directly (the VAE is hand-set and
linear: `world.thumbnails` is its encoding), so there is no data set and no VAE pass. Both
transformers predict the clean latent (x0); noise levels are drawn where the 4-step sampler works
(a third at sigma 1). I2V clips are half first-frame-only (objects move at the prompt's speed, wrapping
at the edges) and half first-and-last-frame (a straight path between two points), laid out exactly as
`WanImageToVideoPipeline.prepare_latents` lays out its condition, with the conditioned frames clean half
of the time, as the sampler's pinning makes them. The I2V loss weighs the cells that objects cover
`1 + OBJECT_WEIGHT` times more: they are a few percent of a frame and what the model is for, and
since the conditions fix where they are, this does not bias its prediction. (The T2I's loss is
plain: it cannot know where the seed puts an object, and a weighted mean would paint the object's
colour everywhere.) The
state (models, EMA, optimiser, RNG, step) is saved every two minutes and at the end of a chunk in
`--state`; the loss log is `loss.jsonl` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import tiny, world

logger = logging.getLogger(__name__)

TOTAL_STEPS = 15000  # joint steps: I2V, T2I and text encoder
T2I_STEPS = 6000     # then T2I-only steps (cheap: 64 tokens), with the shared text encoder fixed
KEYFRAME_STEPS = 4000  # then the T2I with a text encoder of its own, copied from the shared one
OBJECT_STEPS = 3000    # then the same with the object-weighted loss (keyframe places are fixed: no bias)
CHAIN_STEPS = 3000     # then the I2V alone, from degraded conditions to clean clips (chain drift)
OBJECT_LR = 3e-4
T2I_LR = 5e-4
CHAIN_LR = 3e-4
DEGRADED = 0.75        # share of the chain stage's conditioned frames that are degraded
I2V_BATCH, T2I_BATCH = 8, 16
LR, MIN_LR, WARMUP = 1e-3, 1e-4, 200
EMA_DECAY = 0.999
SAMPLER_SIGMAS = (0.75, 0.5, 0.25)  # the 4-step sampler's sigmas after the first (1.0)
SAVE_EVERY_S = 120.0
OBJECT_WEIGHT = 4.0  # extra I2V loss weight on latent cells an object covers: a ball is ~3% of the frame


def condition(x0: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The I2V's mask (4, frames, h, w) and condition latents (like x0) for a clean latent clip x0 (channels,
    frames, h, w), as `WanImageToVideoPipeline.prepare_latents` builds them from its first (and last) image:
    the first latent frame is given on all four mask channels; a last frame is the last of its chunk's four."""
    mask = torch.zeros(4, *x0.shape[1:])
    given = torch.zeros_like(x0)
    mask[:, 0], given[:, 0] = 1.0, x0[:, 0]
    if last:
        mask[3, -1], given[:, -1] = 1.0, x0[:, -1]
    return mask, given


def degrade(frame: torch.Tensor, background: torch.Tensor, axis: int, rng: np.random.Generator) -> torch.Tensor:
    """A clean latent frame (3, h, w) made to look like what the model itself hands the next segment: the
    objects smeared along their motion `axis` (1 rows, 2 columns) and brightened back, as chained segments
    widen them; blurred, as the keyframe T2I draws them; a noisy halo around them; a small colour cast.
    The I2V learns to continue such a frame with clean objects where the smear is centred (it keeps their
    size; it does not learn to restore their shape: bench.tiny_quality's chains)."""
    deviation = frame - background
    low, high = deviation.amin(dim=(1, 2), keepdim=True).clamp(max=0), deviation.amax(dim=(1, 2), keepdim=True)
    covered = deviation.abs().sum(0) > 0.05
    reach = int(rng.integers(0, 4))  # cells (4 px) each way
    if reach:
        smeared = sum(deviation.roll(k, dims=axis) for k in range(-reach, reach + 1)) / (2 * reach + 1)
        deviation = smeared * float(rng.uniform(1.0, 2.0))
    if rng.random() < 0.5:
        kernel = torch.tensor([0.25, 0.5, 0.25])
        deviation = sum(w * deviation.roll(k, dims=1) for w, k in zip(kernel, (-1, 0, 1), strict=True))
        deviation = sum(w * deviation.roll(k, dims=2) for w, k in zip(kernel, (-1, 0, 1), strict=True))
    deviation = torch.maximum(torch.minimum(deviation, high), low)
    halo = torch.nn.functional.max_pool2d(covered[None, None].float(), 9, stride=1, padding=4)[0]
    deviation = deviation + halo * torch.from_numpy(rng.normal(0.0, rng.uniform(0.0, 0.1), deviation.shape)).float()
    cast = torch.from_numpy(rng.normal(0.0, 0.02, (3, 1, 1))).float()
    return (background + deviation + cast).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class Stage:
    """A run of steps that trains `modules` at a learning rate falling from `lr` to `min_lr` (cosine)."""

    name: str
    steps: int
    modules: tuple[str, ...]
    lr: float
    min_lr: float = MIN_LR
    warmup: int = 0


STAGES = (
    Stage("joint", TOTAL_STEPS, ("i2v", "t2i", "text"), LR, warmup=WARMUP),
    Stage("t2i", T2I_STEPS, ("t2i",), T2I_LR),
    Stage("keyframe", KEYFRAME_STEPS, ("t2i", "keyframe_text"), T2I_LR),
    Stage("object", OBJECT_STEPS, ("t2i", "keyframe_text"), OBJECT_LR, OBJECT_LR),
    Stage("chain", CHAIN_STEPS, ("i2v",), CHAIN_LR),
)


def stage_at(step: int) -> tuple[Stage, int]:
    """The stage a global step is in, and the step's place within it (the last stage past the end)."""
    for stage in STAGES:
        if step < stage.steps:
            return stage, step
        step -= stage.steps
    return STAGES[-1], STAGES[-1].steps


class Trainer:
    def __init__(self, state_dir: Path, seed: int = tiny.SEED):
        self.state_dir = Path(state_dir)
        self.i2v, self.t2i = tiny.build_tiny_pipelines()
        self.modules = {"i2v": self.i2v.transformer, "t2i": self.t2i.transformer, "text": self.i2v.text_encoder,
                        "keyframe_text": self.t2i.text_encoder}
        self.params = [p for m in self.modules.values() for p in m.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0, betas=(0.9, 0.99))
        self.step = 0
        self._backgrounds: dict[str, torch.Tensor] = {}
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.load()

    # --- state ------------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.state_dir / "state.pt"

    def load(self) -> None:
        if not self.checkpoint.exists():
            return
        state = torch.load(self.checkpoint, weights_only=False)
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        for held, saved in zip(self.ema, state["ema"], strict=True):
            held.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.rng = state["step"], state["rng"]
        self.generator.set_state(state["generator"])
        logger.info("resumed at step %d", self.step)

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = dict(modules={n: m.state_dict() for n, m in self.modules.items()}, ema=self.ema,
                     optimizer=self.optimizer.state_dict(), step=self.step, rng=self.rng,
                     generator=self.generator.get_state())
        partial = self.checkpoint.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.checkpoint)

    # --- data -------------------------------------------------------------------------------------------
    def embed(self, prompts: list[str], encoder: torch.nn.Module | None = None) -> torch.Tensor:
        """Prompt embeddings as `WanPipeline.encode_prompt` makes them: zero after each prompt's own length."""
        tokens = self.i2v.tokenizer(prompts, padding="max_length", max_length=tiny.MAX_SEQUENCE_LENGTH,
                                    truncation=True, add_special_tokens=True, return_attention_mask=True,
                                    return_tensors="pt")
        encoder = encoder or self.i2v.text_encoder
        hidden = encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
        return hidden * tokens.attention_mask.unsqueeze(-1)

    def sigmas(self, count: int, at_one: float) -> torch.Tensor:
        draw = self.rng.random(count)
        uniform = self.rng.random(count)
        sampler = self.rng.choice(SAMPLER_SIGMAS, count) + self.rng.normal(0, 0.02, count)
        sigma = np.where(draw < at_one, 1.0, np.where(draw < at_one + 0.25, sampler, uniform))
        return torch.tensor(np.clip(sigma, 0.001, 1.0), dtype=torch.float32)

    def background(self, scene: world.Scene) -> torch.Tensor:
        """The latent of the scene's bare background: (3, 1, h, w)."""
        if scene.background not in self._backgrounds:
            self._backgrounds[scene.background] = torch.from_numpy(world.thumbnails(world.Scene(scene.background), 1))
        return self._backgrounds[scene.background]

    def object_cells(self, scene: world.Scene, x0: torch.Tensor) -> torch.Tensor:
        """1 where an object changes a latent cell from the bare background, else 0: (1, frames, h, w)."""
        return ((x0 - self.background(scene)).abs().sum(0, keepdim=True) > 0.05).float()

    @property
    def stage(self) -> Stage:
        return stage_at(self.step)[0]

    def prompt(self, scene: world.Scene) -> str:
        return "" if self.rng.random() < 0.1 else world.noisy_caption(scene, self.rng)

    def i2v_batch(self):
        latent_frames = 21 if self.rng.random() < 0.7 else int(self.rng.choice([3, 6, 9, 12, 15, 18]))
        num_frames = (latent_frames - 1) * world.CHUNK + 1
        clean, masks, conditions, prompts, objects = [], [], [], [], []
        for _ in range(I2V_BATCH):
            scene = world.random_scene(self.rng)
            last = self.rng.random() < 0.5
            if last:
                scene = world.with_path(scene, self.rng)
            x0 = torch.from_numpy(world.thumbnails(scene, num_frames))
            objects.append(self.object_cells(scene, x0))
            mask, given = condition(x0, last)
            if self.stage.name == "chain":  # a degraded condition is what the sampler pins: the target too
                axis = 2 if scene.things[0].direction in ("left", "right") else 1
                for frame in (0, -1) if last else (0,):
                    if self.rng.random() < DEGRADED:
                        given[:, frame] = x0[:, frame] = degrade(x0[:, frame], self.background(scene)[:, 0], axis,
                                                                 self.rng)
            clean.append(x0), masks.append(mask), conditions.append(given), prompts.append(self.prompt(scene))
        return torch.stack(clean), torch.stack(masks), torch.stack(conditions), prompts, torch.stack(objects)

    def t2i_batch(self):
        scenes = [world.random_scene(self.rng) for _ in range(T2I_BATCH)]
        if self.stage.name != "joint":
            scenes = [world.keyframe_layout(scene) for scene in scenes]
        clean = [torch.from_numpy(world.thumbnails(s, 1)) for s in scenes]
        objects = torch.stack([self.object_cells(s, x0) for s, x0 in zip(scenes, clean, strict=True)])
        return torch.stack(clean), [self.prompt(s) for s in scenes], objects

    # --- training ---------------------------------------------------------------------------------------
    def noised(self, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=self.generator)
        s = sigma.view(-1, 1, 1, 1, 1)
        return (1.0 - s) * x0 + s * noise

    @staticmethod
    def weighted_mse(prediction: torch.Tensor, x0: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + OBJECT_WEIGHT * objects
        return ((prediction - x0) ** 2 * weight).mean() / weight.mean()

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in STAGES)

    def indices(self, *names: str) -> list[int]:
        """Positions in `self.params` (and `self.ema`) of the named modules' parameters."""
        found, start = [], 0
        for name, module in self.modules.items():
            count = len(list(module.parameters()))
            if name in names:
                found += range(start, start + count)
            start += count
        return found

    def stage_params(self) -> list[int]:
        """Positions in `self.params` of what the current stage trains."""
        return self.indices(*self.stage.modules)

    def t2i_loss(self, x0: torch.Tensor, embeds: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(T2I_BATCH, at_one=0.2)
        prediction = self.t2i.transformer(hidden_states=self.noised(x0, sigma), timestep=sigma * 1000.0,
                                          encoder_hidden_states=embeds, return_dict=False)[0]
        if self.stage.name == "object":
            return self.weighted_mse(prediction, x0, objects * 2.0)
        return ((prediction - x0) ** 2).mean()

    def loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.stage.name
        if name in ("keyframe", "object"):  # the T2I and its own text encoder
            t2i_x0, t2i_prompts, t2i_objects = self.t2i_batch()
            embeds = self.embed(t2i_prompts, self.t2i.text_encoder)
            return torch.zeros(()), self.t2i_loss(t2i_x0, embeds, t2i_objects)
        if name == "t2i":  # the text encoder is the I2V's too, so it stays as it is
            t2i_x0, t2i_prompts, t2i_objects = self.t2i_batch()
            with torch.no_grad():
                embeds = self.embed(t2i_prompts)
            return torch.zeros(()), self.t2i_loss(t2i_x0, embeds, t2i_objects)
        if name == "chain":  # the I2V alone, with the shared text encoder fixed
            x0, mask, condition, i2v_prompts, objects = self.i2v_batch()
            with torch.no_grad():
                embeds = self.embed(i2v_prompts)
            return self.i2v_loss(x0, mask, condition, embeds, objects), torch.zeros(())
        x0, mask, condition, i2v_prompts, objects = self.i2v_batch()
        t2i_x0, t2i_prompts, t2i_objects = self.t2i_batch()
        embeds = self.embed(i2v_prompts + t2i_prompts)
        i2v_loss = self.i2v_loss(x0, mask, condition, embeds[:I2V_BATCH], objects)
        return i2v_loss, self.t2i_loss(t2i_x0, embeds[I2V_BATCH:], t2i_objects)

    def i2v_loss(self, x0: torch.Tensor, mask: torch.Tensor, condition: torch.Tensor, embeds: torch.Tensor,
                 objects: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(I2V_BATCH, at_one=0.35)
        noisy = self.noised(x0, sigma)
        pinned = torch.from_numpy(self.rng.random(I2V_BATCH) < 0.5).view(-1, 1, 1, 1, 1)
        conditioned = (mask[:, :1] + mask[:, 3:4]).clamp(max=1.0) > 0  # frame 0 and, if given, the last
        noisy = torch.where(pinned & conditioned, x0, noisy)
        inputs = torch.cat([noisy, mask, condition], dim=1)
        prediction = self.i2v.transformer(hidden_states=inputs, timestep=sigma * 1000.0,
                                          encoder_hidden_states=embeds, return_dict=False)[0]
        return self.weighted_mse(prediction, x0, objects)

    def learning_rate(self) -> float:
        stage, step = stage_at(self.step)
        if step < stage.warmup:
            return stage.lr * (step + 1) / stage.warmup
        share = min(1.0, (step - stage.warmup) / max(stage.steps - stage.warmup, 1))
        return stage.min_lr + 0.5 * (stage.lr - stage.min_lr) * (1 + math.cos(math.pi * share))

    def train(self, seconds: float) -> None:
        for module in self.modules.values():
            module.train()
        started = saved = time.monotonic()
        log = (self.state_dir / "loss.jsonl")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train tiny", unit="step", mininterval=30.0)
        with log.open("a") as out:
            while self.step < self.total_steps and time.monotonic() - started < seconds:
                stage, step = stage_at(self.step)
                if stage.name == "keyframe" and step == 0:
                    self.start_keyframe_text()
                for group in self.optimizer.param_groups:
                    group["lr"] = self.learning_rate()
                i2v_loss, t2i_loss = self.loss()
                self.optimizer.zero_grad(set_to_none=True)
                (i2v_loss + t2i_loss).backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))
                trained = self.stage_params()  # average only what this stage trains
                with torch.no_grad():
                    torch._foreach_lerp_([self.ema[i] for i in trained], [self.params[i].detach() for i in trained],
                                         1.0 - decay)
                self.step += 1
                bar.update(1)
                if self.step % 25 == 0:
                    record = dict(step=self.step, i2v=round(i2v_loss.item(), 5), t2i=round(t2i_loss.item(), 5),
                                  lr=round(self.learning_rate(), 6), elapsed_s=round(time.monotonic() - started, 1))
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    bar.set_postfix(i2v=record["i2v"], t2i=record["t2i"])
                if time.monotonic() - saved > SAVE_EVERY_S:
                    self.save()
                    saved = time.monotonic()
        bar.close()
        self.save()

    def start_keyframe_text(self) -> None:
        """The keyframe stage starts the T2I's own text encoder (and its average) from the shared one."""
        self.modules["keyframe_text"].load_state_dict(self.modules["text"].state_dict())
        with torch.no_grad():
            for own, shared in zip(self.indices("keyframe_text"), self.indices("text"), strict=True):
                self.ema[own].copy_(self.ema[shared])

    def export(self, target: Path = tiny.WEIGHTS) -> None:
        """Save the EMA weights as the shipped checkpoints: transformers and text encoder in float16."""
        with torch.no_grad():
            for param, averaged in zip(self.params, self.ema, strict=True):
                param.copy_(averaged)
        for module in self.modules.values():
            module.eval()
            module.to(torch.float16)
        target = Path(target)
        for name, pipe in (("i2v", self.i2v), ("t2i", self.t2i)):
            pipe.save_pretrained(target / name)
        record = dict(steps=self.step, stages={stage.name: stage.steps for stage in STAGES}, i2v_batch=I2V_BATCH,
                      t2i_batch=T2I_BATCH,
                      seed=tiny.SEED, command="python -m pipeline.train_tiny (chunks of --minutes 10), then --export")
        (target / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    from pipeline.config import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=default_cache_dir() / "train-tiny",
                        help="Training state directory (resumed if present).")
    parser.add_argument("--minutes", type=float, default=10.0, help="Wall-clock budget of this chunk (at most 10).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--export", action="store_true", help="Write the EMA weights to pipeline/tiny_weights/.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    trainer = Trainer(args.state)
    if args.export:
        trainer.export()
        print(f"exported step {trainer.step} to {tiny.WEIGHTS}")
        return
    trainer.train(min(args.minutes, 10.0) * 60.0)
    print(f"step {trainer.step} of {trainer.total_steps}; state in {args.state}")


if __name__ == "__main__":
    main()

"""How well the embedded tiny model knows its world, against two baselines computed in the same run.

On held-out clips (fresh random scenes; half of the prompts of combinations never seen in training,
`world.HELD_OUT`), through the shipped checkpoints and the real pipelines (`SegmentGenerator`):

- I2V from the first frame (81 frames): object localisation error per frame (pixels, on the torus)
  against "static" (the first frame repeated), and direction accuracy (the object's centre moved the
  prompt's way by frame 40);
- first+last in-betweens (81 frames): localisation error of the middle frames against "crossfade"
  (first blended into last);
- keyframes (T2I) of held-out combinations: background colour, object colour and shape accuracy;
- keyframe PSNR through the VAE: the conditioned first and last frames of the in-betweens;
- chains of `CHAIN_SEGMENTS` segments, each from frame `STRIDE` of the one before (as chain mode does,
  without the crossfades): from the world's first frame, the object's localisation error, its area
  against the true area and its shape at the end (drift: chained segments used to widen objects); and
  from the model's own keyframe, whether the I2V gives the object the prompt's shape by frame `STRIDE`.

An object that cannot be found in a frame counts as an error of SIZE / 2 pixels.

    python -m bench.tiny_quality [--clips 24]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.machine import describe_machine
from pipeline import world

RESULTS = Path(__file__).resolve().parent / "results"
FRAMES = 81
MISSING = world.SIZE / 2
CHAIN_SEGMENTS = 6
STRIDE = FRAMES - 8  # chain mode's default overlap: the next segment starts at this frame


def _error(frame: np.ndarray, thing: world.Thing, background: str, frame_index: int) -> float:
    found = world.locate(frame, thing.colour, background)
    if found is None:
        return MISSING
    truth = thing.centre(frame_index, FRAMES)
    return float(np.hypot(*(world.torus_delta(t, f) for t, f in zip(truth, found, strict=True))))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _scenes(rng: np.random.Generator, count: int) -> list[world.Scene]:
    return [world.random_scene(rng, two_objects=0.0, held_out=i % 2 == 0) for i in range(count)]


def first_frame(generator, scenes) -> dict:
    from pipeline.generate import SegmentRequest

    model, static, right_way = [], [], []
    for seed, scene in enumerate(scenes):
        truth = world.render_clip(scene, FRAMES)
        frames = generator.segment(SegmentRequest(world.caption(scene), seed, FRAMES, 128, 128, truth[0]))
        thing = scene.things[0]
        model += [_error(frames[t], thing, scene.background, t) for t in range(1, FRAMES)]
        static += [_error(truth[0], thing, scene.background, t) for t in range(1, FRAMES)]
        start, later = (world.locate(frames[t], thing.colour, scene.background) for t in (0, 40))
        dx, dy = world.DIRECTIONS[thing.direction]
        moved = (world.torus_delta(start[0], later[0]) * dx + world.torus_delta(start[1], later[1]) * dy
                 if start and later else 0.0)
        right_way.append(moved > 5.0)
    return {"localisation_px": round(float(np.mean(model)), 2), "static_px": round(float(np.mean(static)), 2),
            "direction_accuracy": round(float(np.mean(right_way)), 3)}


def in_betweens(generator, scenes, rng) -> dict:
    from pipeline.generate import SegmentRequest

    model, crossfade, psnr = [], [], []
    middle = range(8, FRAMES - 8)
    for seed, scene in enumerate(scenes):
        scene = world.with_path(scene, rng)
        truth = world.render_clip(scene, FRAMES)
        frames = generator.segment(SegmentRequest(world.caption(scene), seed, FRAMES, 128, 128, truth[0], truth[-1]))
        thing = scene.things[0]
        for t in middle:
            share = t / (FRAMES - 1)
            blend = ((1 - share) * truth[0] + share * truth[-1] + 0.5).astype(np.uint8)
            model.append(_error(frames[t], thing, scene.background, t))
            crossfade.append(_error(blend, thing, scene.background, t))
        psnr += [_psnr(frames[0], truth[0]), _psnr(frames[-1], truth[-1])]
    return {"localisation_px": round(float(np.mean(model)), 2), "crossfade_px": round(float(np.mean(crossfade)), 2),
            "keyframe_psnr_db_min": round(float(np.min(psnr)), 2)}


def keyframes(generator, scenes) -> dict:
    background, colour, shape = [], [], []
    for seed, scene in enumerate(scenes):
        thing = scene.things[0]
        image = generator.keyframe(world.caption(scene), seed, 128, 128)
        background.append(world.background_colour(image) == scene.background)
        mask = world.object_mask(image, thing.colour, scene.background)
        colour.append(int(mask.sum()) >= 0.4 * np.pi * thing.radius**2)
        shape.append(world.shape_of(mask) == thing.shape)
    return {"background_accuracy": round(float(np.mean(background)), 3),
            "object_colour_accuracy": round(float(np.mean(colour)), 3),
            "shape_accuracy": round(float(np.mean(shape)), 3)}


def chains(generator, scenes) -> dict:
    from pipeline.generate import SegmentRequest

    error, growth, shape, keyframe_shape = [], [], [], []
    for seed, scene in enumerate(scenes):
        thing, caption, background = scene.things[0], world.caption(scene), scene.background
        frame = world.render_clip(scene, 1)[0]
        true_area = world.object_mask(frame, thing.colour, background).sum()
        for k in range(CHAIN_SEGMENTS):  # each segment starts from frame STRIDE of the one before
            frame = generator.segment(SegmentRequest(caption, seed * 100 + k, FRAMES, 128, 128, frame))[STRIDE]
        end = world.object_mask(frame, thing.colour, background)
        error.append(_error(frame, thing, background, CHAIN_SEGMENTS * STRIDE))
        growth.append(end.sum() / true_area)
        shape.append(world.shape_of(end) == thing.shape)
        keyframe = generator.keyframe(caption, seed, 128, 128)
        later = generator.segment(SegmentRequest(caption, seed, FRAMES, 128, 128, keyframe))[STRIDE]
        keyframe_shape.append(world.shape_of(world.object_mask(later, thing.colour, background)) == thing.shape)
    return {"segments": CHAIN_SEGMENTS, "end_localisation_px": round(float(np.mean(error)), 2),
            "end_area_ratio": round(float(np.median(growth)), 2), "end_shape_accuracy": round(float(np.mean(shape)), 3),
            "from_keyframe_shape_accuracy": round(float(np.mean(keyframe_shape)), 3)}


def main() -> None:
    import torch

    from pipeline.config import ModelConfig
    from pipeline.generate import SegmentGenerator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24, help="Held-out clips per task.")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--only", choices=["chains"], default=None, help="Run one task (not recorded).")
    args = parser.parse_args()
    torch.set_num_threads(1)  # quality, not speed: one thread is robust on a shared machine
    config = ModelConfig() if args.cache_dir is None else ModelConfig(cache_dir=args.cache_dir)
    generator = SegmentGenerator(config, torch.device("cpu"))
    if args.only == "chains":
        print(chains(generator, _scenes(np.random.default_rng(8), args.clips)))
        return
    rng = np.random.default_rng(7)  # training draws from tiny.SEED; these scenes are new
    results = {"i2v_first_frame": first_frame(generator, _scenes(rng, args.clips)),
               "i2v_first_last": in_betweens(generator, _scenes(rng, args.clips), rng),
               "t2i_held_out": keyframes(generator, [world.random_scene(rng, 0.0, held_out=True)
                                                     for _ in range(args.clips)]),
               "chains": chains(generator, _scenes(rng, args.clips))}
    first, between = results["i2v_first_frame"], results["i2v_first_last"]
    results["beats_static"] = first["localisation_px"] < first["static_px"]
    results["beats_crossfade"] = between["localisation_px"] < between["crossfade_px"]
    for task, values in results.items():
        print(f"{task:>16}: {values}")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "tiny_quality", "command": f"python -m bench.tiny_quality --clips {args.clips}",
              "machine": describe_machine(torch=torch.__version__), "clips": args.clips, "results": results}
    (RESULTS / "tiny_quality.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

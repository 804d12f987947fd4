"""`minutereel` command line: render, plan, stitch, presets. The only place that reads the environment."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from actors.config import ParallelConfig
from orchestrator import environment
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest, load_storyboard
from pipeline.config import ModelConfig, SequenceParallelConfig, StitchConfig, default_cache_dir
from pipeline.presets import LoraSpec, is_preset_file
from pipeline.seams import SeamReport
from pipeline.video_io import output_format

logger = logging.getLogger("minutereel")


def _add_field_flag(parser: argparse.ArgumentParser, flag: str, model: type[BaseModel], field: str, note: str = "",
                    **kwargs) -> None:
    """Add `flag` for `model`'s `field`, taking its default, type, choices and help (the field's description, then
    `note`) from the model: the pydantic models hold the one copy of every default."""
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    kinds = [a for a in get_args(info.annotation) if a is not type(None)] \
        if get_origin(info.annotation) in (Union, UnionType) else [info.annotation]
    (kind,) = kinds
    if get_origin(kind) is Literal:
        kwargs.setdefault("choices", list(get_args(kind)))
    elif kind in (int, float, str):
        kwargs.setdefault("type", kind)
    text = "; ".join(filter(None, [(info.description or "").rstrip("."), note])).replace("%", "%%")
    if default is not None:
        text += " (default: %(default)s)"
    parser.add_argument(flag, default=default, help=text, **kwargs)


def _add_request_flags(parser: argparse.ArgumentParser) -> None:
    _add_field_flag(parser, "--prompt", RenderRequest, "prompt", "required unless --storyboard is given")
    parser.add_argument("--storyboard", help="YAML or JSON list of {at_s, prompt, image?}")
    _add_field_flag(parser, "--image", RenderRequest, "image")
    _add_field_flag(parser, "--duration", RenderRequest, "duration_s")
    _add_field_flag(parser, "--fps", RenderRequest, "fps")
    _add_field_flag(parser, "--width", RenderRequest, "width")
    _add_field_flag(parser, "--height", RenderRequest, "height")
    _add_field_flag(parser, "--seed", RenderRequest, "seed")
    _add_model_flags(parser)
    _add_field_flag(parser, "--mode", RenderRequest, "mode")
    _add_field_flag(parser, "--overlap", RenderRequest, "overlap_frames")
    _add_field_flag(parser, "--segment-frames", RenderRequest, "segment_frames")
    _add_field_flag(parser, "--steps", RenderRequest, "steps")
    _add_field_flag(parser, "--guidance", RenderRequest, "guidance")
    _add_pool_flags(parser)


def _add_pool_flags(parser: argparse.ArgumentParser) -> None:
    _add_field_flag(parser, "--workers", ParallelConfig, "workers")
    _add_field_flag(parser, "--sp-degree", SequenceParallelConfig, "degree", "sequence parallelism")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    _add_field_flag(parser, "--preset", ModelConfig, "preset")
    _add_field_flag(parser, "--quantize", ModelConfig, "quantize")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH_OR_ID[:SCALE]",
                        help="LoRA fused into the model after the preset's own (repeatable): a .safetensors file or "
                             "a directory holding one, or a hub id owner/name[/FILE]; SCALE defaults to 1")


def _add_stitch_flags(parser: argparse.ArgumentParser) -> None:
    _add_field_flag(parser, "--blend", StitchConfig, "curve")
    parser.add_argument("--no-color-correction", dest="color_correction", action="store_false",
                        default=StitchConfig.model_fields["color_correction"].default,
                        help="keep each segment's colours (default: match its mean and spread to the previous "
                             "segment's in their overlap; chain mode only when rendering)")
    _add_field_flag(parser, "--crf", StitchConfig, "crf")
    _add_field_flag(parser, "--codec", StitchConfig, "codec", "ffv1 is lossless and needs an .mkv output")


def _stitch_config(args: argparse.Namespace) -> StitchConfig:
    return StitchConfig(curve=args.blend, crf=args.crf, codec=args.codec, color_correction=args.color_correction)


def _print_seams(report: SeamReport) -> None:
    """One line per seam, then the worst: a jump near 1 is invisible, a hard cut scores far higher."""
    for s in report.seams:
        print(f"seam {s.index}|{s.index + 1} at frame {s.frame} (overlap {s.overlap}): jump {s.jump:.2f} "
              f"(step {s.step:.2f} vs typical {s.typical:.2f} levels)")
    if report.worst:
        print(f"{len(report.seams)} seam(s), worst jump {report.worst.jump:.2f} at frame {report.worst.frame} "
              f"(1 = like a normal frame step)")


def _request(args: argparse.Namespace) -> RenderRequest:
    return RenderRequest(
        prompt=args.prompt, storyboard=load_storyboard(args.storyboard) if args.storyboard else [],
        image=args.image, duration_s=args.duration, fps=args.fps, width=args.width,
        height=args.height, seed=args.seed, preset=args.preset, mode=args.mode, overlap_frames=args.overlap,
        segment_frames=args.segment_frames, steps=args.steps, guidance=args.guidance,
        loras=_loras(args) or None,
    )


def _loras(args: argparse.Namespace) -> tuple[LoraSpec, ...]:
    return tuple(LoraSpec.parse(text) for text in args.lora)


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=ModelConfig(preset=args.preset, quantize=args.quantize, loras=_loras(args),
                          cache_dir=environment.cache_dir() or default_cache_dir()),
        parallel=ParallelConfig(workers=args.workers, sequence=SequenceParallelConfig(degree=args.sp_degree)),
        stitch=_stitch_config(args),
        ray_address=environment.ray_address(),
    )


def _render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from orchestrator.engine import RenderEngine, preflight

    request, config = _request(args), _engine_config(args)
    preflight(config)  # a missing checkpoint or a broken LoRA fails before a job directory or Ray exists
    if request.mode is not None and not args.resume:
        # A request the planner refuses (sizes, overlaps, modes) fails before Ray too. Without --mode the mode
        # follows the pool's size, known once the pool has started: the engine plans it then.
        from orchestrator.planner import plan_render
        from pipeline.presets import load_preset

        plan_render(request, load_preset(request.preset))
    job, request = _open_job(args, request)
    out = Path(args.out) if args.out else job.output
    output_format(out, config.stitch.codec)  # a codec/container mismatch fails before Ray starts
    resumed = job is not None and job.state().history != ["queued"]
    if resumed:
        job.requeue()  # it waits for the pool like a new one
    engine = RenderEngine(config)
    try:
        bar = tqdm(unit="task", desc="render")

        def show(progress):
            bar.total = progress.keyframes_total + progress.segments_total
            bar.n = progress.keyframes_done + progress.segments_done
            bar.set_postfix_str(
                f"keyframes {progress.keyframes_done}/{progress.keyframes_total} "
                f"segments {progress.segments_done}/{progress.segments_total} "
                f"frames {progress.frames_written}/{progress.frames_total}"
            )

        # The job's lifecycle (planning, rendering, stitching, done or failed) is written by the engine, as for
        # the server's and batch's jobs; _open_job already checked a resumed job's request.
        result = engine.render(request, out, on_progress=show, job=job, check_request=not resumed)
        bar.close()
    finally:
        engine.shutdown()
    plan = result.plan
    if job and result.rendered["segment"] < len(plan.segments):
        print(f"resumed {job.dir}: rendered {result.rendered['segment']} of {len(plan.segments)} segments")
    _print_seams(result.seams)
    startup = engine.startup
    phases = ", ".join(f"{name} by {t:.1f}" for name, t in startup["pool_phases_s"].items() if name != "group")
    ready, groups = startup["groups_ready"], startup["groups"]
    joined = f"; rendering began with {ready} of {groups} groups ready" if ready < groups else ""
    print(f"start-up: {startup['preflight_and_ray_s']:.1f}s checks and Ray, {startup['pool_s']:.1f}s pool "
          f"({phases}{joined})")
    print(f"wrote {result.path}: {plan.total_frames} frames, {plan.width}x{plan.height} at {plan.fps} fps, "
          f"{len(plan.segments)} segments ({plan.mode}, {engine.pool.size} worker(s)) in {result.seconds:.1f}s")
    return 0


def _open_job(args: argparse.Namespace, request: RenderRequest):
    """The job directory named by --job-dir (new, or with --resume the one already there) and the
    request to render in it."""
    from orchestrator.jobs import JobStore
    from pipeline.presets import load_preset, weights_id

    if not args.job_dir:
        if args.resume:
            raise ValueError("--resume needs --job-dir DIR")
        if not args.out:
            raise ValueError("give --out FILE (or --job-dir DIR to render into DIR/output.mp4)")
        return None, request
    folder = Path(args.job_dir).resolve()
    store = JobStore(folder.parent)
    if not store.exists(folder.name):
        return store.create(request, job_id=folder.name), request
    if not args.resume:
        raise ValueError(f"{folder} already holds a job; pass --resume to continue it, or choose a new --job-dir")
    job = store.open(folder.name)
    request = job.resume_request(request, "Resume it with the same flags, or choose a new --job-dir.")
    saved = job.plan()
    if saved is not None:  # refused before any model loads
        saved.require_weights(weights_id(load_preset(request.preset), args.quantize, _loras(args)), job.id)
    return job, request


def _serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from orchestrator.engine import connect_ray
    from orchestrator.serve import ServeSettings, build_app

    config = _engine_config(args)
    jobs_root = args.jobs_root or environment.jobs_root()
    connect_ray(config.ray_address)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(_serve_args(args, config, jobs_root))
    serve.run(app, name="minutereel", route_prefix="/")
    print(f"minutereel serving on http://{args.host}:{args.port} (jobs in {jobs_root}); Ctrl-C stops")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    with contextlib.suppress(ValueError):  # the runner is detached: it outlives the app unless stopped
        ray.kill(ray.get_actor(ServeSettings.model_fields["runner_name"].default))
    return 0


def _serve_args(args: argparse.Namespace, config: EngineConfig, jobs_root: str) -> dict:
    """build_app's arguments (ServeSettings' fields); those the flags leave unset take ServeSettings' defaults."""
    given = {"max_active_jobs": args.max_active_jobs} if args.max_active_jobs is not None else {}
    return {"jobs_root": jobs_root, **given, **config.model_dump(mode="json", include={"model", "parallel", "stitch"})}


def _plan(args: argparse.Namespace) -> int:
    from orchestrator.planner import default_mode, plan_render
    from pipeline.presets import load_preset, weights_id

    request = _request(args)
    preset = load_preset(request.preset)
    if request.mode is None:
        request = request.model_copy(update={"mode": default_mode(preset, args.workers or os.cpu_count() or 1)})
    weights = weights_id(preset, args.quantize, _loras(args))
    plan = plan_render(request, preset).model_copy(update={"weights": weights})
    if args.json:
        print(plan.model_dump_json(indent=2))
    else:
        print(f"{plan.mode}: {plan.total_frames} frames at {plan.fps} fps, {plan.width}x{plan.height}, "
              f"{len(plan.keyframes)} keyframes, {len(plan.segments)} segments in {plan.waves} wave(s)")
        for s in plan.segments:
            last = f" last={s.last.source}{s.last.index}@{s.last.frame}" if s.last else ""
            print(f"  segment {s.index}: frames {s.start_frame}-{s.end_frame - 1} wave {s.wave} "
                  f"first={s.first.source}{s.first.index}@{s.first.frame}{last} prompt={s.prompt!r}")
        for k in plan.keyframes:
            print(f"  keyframe {k.index}: frame {k.frame} {k.source}{' ' + k.image if k.image else ''} "
                  f"prompt={k.prompt!r}")
    return 0


def _stitch(args: argparse.Namespace) -> int:
    from pipeline.clips import stitch_clips
    from pipeline.video_io import probe_video

    out = Path(args.out)
    report = stitch_clips([Path(c) for c in args.clips], args.overlap, out, _stitch_config(args), resize=args.resize)
    info = probe_video(out)
    _print_seams(report)
    print(f"wrote {out}: {report.frames} frames, {info.width}x{info.height} at {info.fps} fps, "
          f"from {len(args.clips)} clip(s) with {args.overlap}-frame overlaps")
    return 0


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 / 10 else f"{num_bytes / 2**20:.1f} MiB"


def _preset_fields(preset) -> dict:
    """Every field of `preset`, its modes, and the memory estimate per rank in bytes by quantization and SP degree."""
    from pipeline.memory import SP_DEGREES, estimate_memory

    memory = {label: {str(degree): estimate_memory(preset, quantize, degree).total for degree in SP_DEGREES}
              for quantize, label in (("none", preset.dtype), ("int8", "int8"))}
    return {**preset.model_dump(mode="json"), "modes": list(preset.modes), "memory_per_rank_bytes": memory}


def _presets(args: argparse.Namespace) -> int:
    from pipeline.memory import SP_DEGREES, estimate_memory
    from pipeline.presets import load_preset, preset_names

    names = [*preset_names(), *(str(Path(f).resolve()) for f in args.files)]
    if args.json:
        print(json.dumps([_preset_fields(load_preset(name)) for name in names], indent=2))
        return 0
    for name in names:
        p = load_preset(name)
        sizes = ", ".join(f"{w}x{h}" + (" (default)" if (w, h) == (p.default_width, p.default_height) else "")
                          for w, h in p.resolution_buckets)
        print(f"{p.name}: {p.description}")
        print(f"  I2V {p.i2v_model} ({p.i2v_pipeline}); keyframes {p.t2i_model} ({p.t2i_pipeline})")
        print(f"  modes {', '.join(p.modes)}; {p.native_fps} fps native; frames % {p.frame_modulus} == "
              f"{p.frame_remainder}, at most {p.max_frames}; sizes {sizes}; {p.steps} steps, guidance {p.guidance}; "
              f"SP backend {p.sp_backend}")
        if p.loras:
            print(f"  LoRAs fused at load: {', '.join(lora.label for lora in p.loras)}")
        if p.vocabulary:
            print(f"  knows only these words (others are ignored): {' '.join(p.vocabulary)}")
        print(f"  GPU memory per rank for one {p.max_frames}-frame {p.default_width}x{p.default_height} segment "
              f"(weights + activations) at SP degree " + " / ".join(map(str, SP_DEGREES)) + ":")
        for quantize, label in (("none", p.dtype), ("int8", "int8")):
            estimates = [estimate_memory(p, quantize, degree) for degree in SP_DEGREES]
            print(f"    {label:>8}: " + " / ".join(_size(e.total) for e in estimates)
                  + f"  (weights {_size(estimates[0].weights)})")
    print("Estimate (pipeline/memory.py): both pipelines' weights on every rank, since sequence parallelism splits "
          "activations, not weights; plus one transformer block's peak activations, split over the ranks. Leaves "
          "out the CUDA context, the VAE decode workspace and text-encoder activations.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minutereel", description="Render minute-long video on a Ray cluster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="render a video to an MP4")
    _add_request_flags(render)
    render.add_argument("--out", help="output file (.mp4, .mov, or .mkv); default DIR/output.mp4 with --job-dir")
    render.add_argument("--job-dir", help="save request, plan, state, keyframes and segments here")
    render.add_argument("--resume", action="store_true",
                        help="continue the job in --job-dir, rendering only what is missing")
    _add_stitch_flags(render)
    render.set_defaults(run=_render)

    plan = commands.add_parser("plan", help="print the plan for a render without rendering")
    _add_request_flags(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_plan)

    stitch = commands.add_parser("stitch", help="stitch existing clips that share overlap frames into one video")
    stitch.add_argument("clips", nargs="+", metavar="CLIP", help="video files, in order")
    stitch.add_argument("--overlap", type=int, required=True,
                        help="frames each clip shares with the next (crossfaded; 0 joins them end to end)")
    stitch.add_argument("--out", required=True, help="output file (.mp4, .mov, or .mkv)")
    stitch.add_argument("--resize", action="store_true",
                        help="scale clips of another size to the first clip's (frame rates must still match)")
    _add_stitch_flags(stitch)
    stitch.set_defaults(run=_stitch)

    serve_cmd = commands.add_parser("serve", help="serve the HTTP API (Ray Serve) on a local or RAY_ADDRESS cluster")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve_cmd.add_argument("--jobs-root", help="job directories (default: $MINUTEREEL_JOBS_ROOT or ./minutereel-jobs)")
    serve_cmd.add_argument("--max-active-jobs", type=int,
                           help="unfinished jobs before POST answers 429 (default: ServeSettings.max_active_jobs)")
    _add_model_flags(serve_cmd)
    _add_pool_flags(serve_cmd)
    _add_stitch_flags(serve_cmd)
    serve_cmd.set_defaults(run=_serve)

    presets = commands.add_parser("presets", help="list model presets")
    presets.add_argument("files", nargs="*", metavar="PRESET.yaml", help="preset files to list after the shipped ones")
    presets.add_argument("--json", action="store_true",
                         help="print every preset's fields, modes and memory estimate (bytes per rank) as JSON")
    presets.set_defaults(run=_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if is_preset_file(getattr(args, "preset", "")):
        args.preset = str(Path(args.preset).resolve())  # the ranks load it too, from another working directory
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.run(args)
    except ValidationError as err:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        print(f"minutereel: invalid request: {details}", file=sys.stderr)
    except ValueError as err:
        print(f"minutereel: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

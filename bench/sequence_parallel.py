"""Sequence parallelism on CPU: degree 2 against degree 1, and what the ranks send each other.

For the tiny Wan I2V transformer at the latent sizes of 81-frame segments at 128x128, 256x256 and
512x512 pixels, on gloo ranks (Ray actors):
- the time of one transformer forward (one denoising step without CFG) at degree 1 and 2;
- the bytes each rank sends per denoising step, computed from the shapes (Ulysses attention:
  an all-to-all of query, key, value and output in every attention layer, each rank keeping 1/P
  of its shard; an all-gather of the output sequence at the end of the context-parallel region),
  and checked against the collectives the torch profiler saw the rank issue.

    python -m bench.sequence_parallel
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path

import ray

from actors.config import ParallelConfig
from actors.shard import ShardGroup
from bench.minute import RESULTS, _machine
from orchestrator.engine import connect_ray
from pipeline.config import ModelConfig, SequenceParallelConfig, default_cache_dir
from pipeline.parallel import probe_transformer
from pipeline.tiny import ensure_tiny_checkpoints

# 81 frames -> (81 - 1) / 4 + 1 = 21 latent frames; pixels / 4 latent pixels per side (the tiny VAE).
LATENTS = ((21, 32, 32), (21, 64, 64), (21, 128, 128))
REPEATS = 4


def _timed_forwards(rank, latent: tuple[int, int, int], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        probe_transformer(rank.generator.i2v.transformer, 0, *latent)
        times.append(time.perf_counter() - started)
    return times


def _collectives(rank, latent: tuple[int, int, int]) -> list[dict]:
    """The collectives one forward issues on this rank: name and input bytes."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        probe_transformer(rank.generator.i2v.transformer, 0, *latent)
    seen = []
    for event in prof.events():
        if event.name.startswith("_c10d_functional::") and ("all_to_all" in event.name or "all_gather" in event.name):
            shape = event.input_shapes[0]
            seen.append({"op": event.name.split("::")[1], "bytes": 4 * int(torch.tensor(shape).prod())})
    return seen


def predicted_bytes_sent(transformer_config: dict, latent: tuple[int, int, int], degree: int) -> dict:
    """Bytes one rank sends per forward, from the shapes: every self-attention layer all-to-alls
    q, k, v and o (keeping 1/P of each; cross-attention keys come from the unsharded text), and the
    output sequence is all-gathered once (each rank sends its shard to the P - 1 others)."""
    frames, height, width = latent
    patch_t, patch_h, patch_w = transformer_config["patch_size"]
    tokens = frames // patch_t * (height // patch_h) * (width // patch_w)
    hidden = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    shard = tokens // degree * hidden * 4
    per_layer = 4 * shard * (degree - 1) / degree
    attention_layers = transformer_config["num_layers"]  # self-attention only: text keys are not sharded
    out_channels = transformer_config["out_channels"] * patch_t * patch_h * patch_w
    gather = tokens // degree * out_channels * 4 * (degree - 1)
    return {"tokens": tokens, "all_to_all": per_layer * attention_layers, "all_gather": gather,
            "total": per_layer * attention_layers + gather}


def _group(cache: Path, degree: int) -> ShardGroup:
    parallel = ParallelConfig(sequence=SequenceParallelConfig(degree=degree))
    group = ShardGroup(0, ModelConfig(cache_dir=cache), parallel, use_gpu=False)
    ray.get(group.start())
    return group


def _config(rank) -> dict:
    return dict(rank.generator.i2v.transformer.config)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cache = Path(os.environ.get("MINUTEREEL_CACHE") or default_cache_dir())
    ensure_tiny_checkpoints(cache)
    connect_ray(None)
    rows = []
    for degree in (1, 2):
        group = _group(cache, degree)
        try:
            config = ray.get(group.ranks[0].execute.remote(_config))
            for latent in LATENTS:
                times = ray.get(group.call("execute", _timed_forwards, latent, REPEATS))[0]
                seen = ray.get(group.call("execute", _collectives, latent))[0] if degree > 1 else []
                rows.append({"degree": degree, "latent": latent, "forward_s": statistics.median(times[1:]),
                             "collectives": seen})
        finally:
            group.shutdown()
    ray.shutdown()
    print("tiny Wan I2V transformer (2 layers, 2 heads x 12), gloo ranks as Ray actors, one thread each")
    print(f"{'latent':>14} {'tokens':>7} {'deg 1 s':>8} {'deg 2 s':>8} {'2 vs 1':>7} "
          f"{'bytes/step computed':>20} {'counted':>10} {'collectives':>11}")
    record_rows = []
    for latent in LATENTS:
        one, two = (next(r for r in rows if r["degree"] == d and r["latent"] == latent) for d in (1, 2))
        predicted = predicted_bytes_sent(config, latent, 2)
        seen = two["collectives"]
        counted = (sum(c["bytes"] for c in seen if "all_to_all" in c["op"]) / 2  # keeps 1/P of each
                   + sum(c["bytes"] for c in seen if "all_gather" in c["op"]))  # sends its shard to P - 1
        ratio = two["forward_s"] / one["forward_s"]
        print(f"{str(latent):>14} {predicted['tokens']:>7} {one['forward_s']:>8.4f} {two['forward_s']:>8.4f} "
              f"{ratio:>7.2f} {predicted['total']:>20,.0f} {counted:>10,.0f} {len(seen):>11}")
        record_rows.append({"latent": latent, "tokens": predicted["tokens"], "forward_s_degree_1": one["forward_s"],
                            "forward_s_degree_2": two["forward_s"], "time_ratio_2_vs_1": ratio,
                            "bytes_per_step_computed": predicted, "bytes_per_step_counted": counted,
                            "collectives_counted": len(seen)})
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "sequence_parallel", "command": "python -m bench.sequence_parallel",
              "machine": _machine(), "rows": record_rows}
    (RESULTS / "sequence_parallel.json").write_text(json.dumps(record, indent=2) + "\n")

if __name__ == "__main__":
    main()

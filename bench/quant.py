"""int8 weight-only quantization on a real video transformer: weight bytes, peak RSS and step time, bf16 vs int8.

    python -m bench.quant              # the Wan 2.2 TI2V 5B transformer (preset wan2.2-ti2v-5b)
    python -m bench.quant --reduced    # the same architecture, 2 layers and 512 wide: seconds, no results file

The architecture is the transformer of preset `wan2.2-ti2v-5b` (config from diffusers'
scripts/convert_wan_to_diffusers.py, "Wan2.2-TI2V-5B"; 5.0e9 parameters). The other real presets'
transformers (Wan 14B: 16.4e9 and 14.3e9 parameters; HunyuanVideo 12.8e9; FLUX 11.9e9) need 24-33 GiB
in bf16 alone and do not fit this 24 GiB machine. Weights are random and seeded; nothing is downloaded.

Each dtype runs in a fresh child process, so peaks do not mix:
1. build: the module is constructed with bf16 as the default dtype (so no float32 copy ever exists),
   from `torch.manual_seed(SEED)`, so both children hold the same weights; the modules diffusers keeps
   in float32 when loading in bf16 (`_keep_in_fp32_modules`: time embedder, norms, scale-shift tables,
   rope) are cast back to float32, as `from_pretrained(..., torch_dtype=torch.bfloat16)` would leave them.
2. int8 only: `optimum.quanto.quantize(weights=qint8)` then `freeze`, as pipeline/quantize.py does: every
   Linear holds int8 weights and a bf16 scale per output channel; activations stay bf16. The freed bf16
   weights go back to the OS (malloc_trim), so the RSS at rest is what int8 holds.
3. weight bytes: every tensor of the state dict (int8 data, scales, float parameters and buffers).
4. the peak-RSS mark is reset (/proc/self/clear_refs), then one warm-up and STEPS timed denoising steps:
   one transformer forward (batch 1, no CFG) on a small latent, with the per-token timesteps of TI2V
   image-to-video (first latent frame clean) and 512 text tokens, as the pipeline passes them.
Reported: parameters, weight bytes and their ratio to bf16, peak RSS while building and while stepping,
step time (best of STEPS; the machine is shared, and interference only slows), and the int8 output's
L2 error relative to the bf16 output of the same weights.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 20250211
STEPS = 3
TEXT_TOKENS = 512

# Wan 2.2 TI2V 5B transformer, as diffusers' scripts/convert_wan_to_diffusers.py converts it.
TI2V_5B = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-6, ffn_dim=14336,
               freq_dim=256, in_channels=48, num_attention_heads=24, num_layers=30, out_channels=48,
               patch_size=(1, 2, 2), qk_norm="rms_norm_across_heads", text_dim=4096)
REDUCED = dict(TI2V_5B, num_attention_heads=4, num_layers=2, ffn_dim=2048)
# Latent of one step: 3 latent frames (9 video frames) of 16x16 (256x256 pixels at VAE stride 16): 192 tokens.
LATENT = (3, 16, 16)


def _status_gib(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in GiB."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 2**20


def _machine() -> dict:
    import diffusers
    import optimum.quanto
    import torch

    return describe_machine(torch=torch.__version__, diffusers=diffusers.__version__,
                            optimum_quanto=optimum.quanto.__version__)


def build_transformer(config: dict):
    """The Wan transformer of `config` with seeded random weights, built in bf16 (float32 where diffusers keeps it)."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(SEED)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(default)
    keep = set(model._keep_in_fp32_modules)
    for name, param in model.named_parameters():
        if keep & set(name.split(".")):  # the rule from_pretrained applies
            param.data = param.data.float()
    return model.eval().requires_grad_(False)


def weight_bytes(model) -> int:
    """Bytes of every tensor in the state dict: quanto's int8 data and scales included."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def step_inputs(config: dict, latent: tuple[int, int, int] = LATENT) -> dict:
    """Seeded inputs of one TI2V image-to-video denoising step: noisy latent, per-token timesteps, text."""
    import torch

    generator = torch.Generator().manual_seed(SEED + 1)
    frames, height, width = latent
    _, patch_h, patch_w = config["patch_size"]
    tokens_per_frame = (height // patch_h) * (width // patch_w)
    timestep = torch.full((1, frames * tokens_per_frame), 500.0)
    timestep[:, :tokens_per_frame] = 0.0  # the conditioning frame is clean
    return dict(
        hidden_states=torch.randn(1, config["in_channels"], *latent, generator=generator).to(torch.bfloat16),
        timestep=timestep,
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, config["text_dim"], generator=generator).to(torch.bfloat16),
        return_dict=False,
    )


def _child(config_name: str, dtype: str, steps: int, out: Path) -> None:
    """One measurement in this fresh process; prints JSON and saves the step's output to `out`."""
    import torch
    from optimum.quanto import freeze, qint8, quantize

    torch.set_num_threads(os.cpu_count() or 1)
    config = TI2V_5B if config_name == "ti2v-5b" else REDUCED
    started = time.perf_counter()
    model = build_transformer(config)
    parameters = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - started
    if dtype == "int8":
        quantize(model, weights=qint8)
        freeze(model)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps the freed bf16 weights in its heap: hand them back
    build_peak = _status_gib("VmHWM")
    inputs = step_inputs(config)
    Path("/proc/self/clear_refs").write_text("5")  # the step's peak starts from the weights at rest
    at_rest = _status_gib("VmRSS")
    times = []
    with torch.inference_mode():
        output = model(**inputs)[0]  # warm-up
        for _ in range(steps):
            started = time.perf_counter()
            output = model(**inputs)[0]
            times.append(time.perf_counter() - started)
    torch.save(output.float(), out)
    print(json.dumps({"dtype": dtype, "parameters": parameters, "weight_bytes": weight_bytes(model),
                      "build_s": round(build_s, 1), "build_peak_rss_gib": round(build_peak, 2),
                      "rest_rss_gib": round(at_rest, 2), "step_peak_rss_gib": round(_status_gib("VmHWM"), 2),
                      "step_s": [round(t, 3) for t in times], "best_step_s": round(min(times), 3)}))


def measure(config_name: str, steps: int = STEPS) -> dict:
    """bf16 and int8 runs of `config_name` ('ti2v-5b' or 'reduced'), each in a child process, and their ratios."""
    import torch

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("bf16", "int8"):
            out = Path(tmp) / f"{dtype}.pt"
            command = [sys.executable, "-m", "bench.quant", "--child", config_name, dtype, str(steps), str(out)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{dtype} run failed:\n{done.stderr[-3000:]}")
            runs[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
            runs[dtype]["output"] = torch.load(out)
    bf16, int8 = runs["bf16"], runs["int8"]
    error = (int8.pop("output") - bf16["output"]).norm() / bf16.pop("output").norm()
    return {"config": config_name, "tokens": LATENT[0] * (LATENT[1] // 2) * (LATENT[2] // 2),
            "text_tokens": TEXT_TOKENS, "runs": [bf16, int8],
            "int8_vs_bf16": {"weight_bytes": round(int8["weight_bytes"] / bf16["weight_bytes"], 4),
                             "step_peak_rss": round(int8["step_peak_rss_gib"] / bf16["step_peak_rss_gib"], 3),
                             "best_step_s": round(int8["best_step_s"] / bf16["best_step_s"], 3),
                             "output_relative_l2_error": round(float(error), 4)}}


def _print(result: dict) -> None:
    print(f"{result['config']}: one denoising step on {result['tokens']} video tokens + {result['text_tokens']} "
          f"text tokens")
    print(f"{'dtype':<6} {'parameters':>14} {'weights GiB':>12} {'/ bf16':>7} {'build peak RSS GiB':>19} "
          f"{'step peak RSS GiB':>18} {'step s (best)':>14}")
    for run in result["runs"]:
        ratio = run["weight_bytes"] / result["runs"][0]["weight_bytes"]
        print(f"{run['dtype']:<6} {run['parameters']:>14,d} {run['weight_bytes'] / 2**30:>12.3f} {ratio:>7.3f} "
              f"{run['build_peak_rss_gib']:>19.2f} {run['step_peak_rss_gib']:>18.2f} {run['best_step_s']:>14.2f}")
    ratios = result["int8_vs_bf16"]
    print(f"int8 / bf16: weights {ratios['weight_bytes']:.3f}, step peak RSS {ratios['step_peak_rss']:.3f}, "
          f"step time {ratios['best_step_s']:.3f}; int8 output vs bf16: relative L2 error "
          f"{ratios['output_relative_l2_error']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="2 layers, 512 wide: a smoke run (no results file)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"timed steps per dtype (default {STEPS})")
    parser.add_argument("--child", nargs=4, metavar=("CONFIG", "DTYPE", "STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]), Path(args.child[3]))
        return
    started = time.perf_counter()
    result = measure("reduced" if args.reduced else "ti2v-5b", args.steps)
    _print(result)
    total = time.perf_counter() - started
    print(f"total {total:.0f}s")
    if not args.reduced:
        RESULTS.mkdir(exist_ok=True)
        record = {"benchmark": "quant", "command": "python -m bench.quant", "machine": _machine(),
                  "architecture": "Wan 2.2 TI2V 5B transformer (preset wan2.2-ti2v-5b)", "config": TI2V_5B,
                  **result, "total_s": round(total, 1)}
        (RESULTS / "quant.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""LoRAs: find the file, check that it fits the transformer before any model loads, fuse it into the weights.

Files come in the layouts users have: diffusers/PEFT (`transformer.blocks.0.attn1.to_q.lora_A.weight`) and the
original Wan one (`diffusion_model.blocks.0.self_attn.q.lora_down.weight` with `alpha`; lightx2v, Kijai), which
the pipeline's own `lora_state_dict` converts. `check_loras` runs that conversion on the file's header alone (each
tensor a meta tensor of its shape; only the scalar alphas are read) and compares every LoRA layer with the
transformer built on the meta device from its config.json, so a LoRA for another model is one line naming the
file and the layer, not a size-mismatch traceback from every rank (or, for a layer the model lacks, no error
at all: diffusers only warns and renders without it).

`fuse_loras` loads each LoRA with diffusers (the PEFT backend), fuses it at its scale and unloads the adapter,
so the transformer is plain `nn.Linear` layers again: quantization and sequence parallelism come after (the
only order that works: a LoRA loaded after context parallelism mismatches sizes, and quantizing after it drops
its gather hook).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.presets import LORA_WEIGHT_NAME, LoraSpec

if TYPE_CHECKING:  # torch is imported where it runs: the driver's preflight needs none without LoRAs
    import torch

logger = logging.getLogger(__name__)

LORA_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_B.bias")


class LoraUnavailable(ValueError):
    """A LoRA is missing, unreadable, or does not fit the transformer it targets. One line, naming the file."""


def _reason(err: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def lora_file(lora: LoraSpec) -> Path:
    """The .safetensors file of `lora` on this machine (a hub file is downloaded into the Hugging Face cache)."""
    if lora.is_local:
        path = Path(lora.source)
        if path.is_dir():
            path = path / (lora.weight_name or LORA_WEIGHT_NAME)
        if not path.is_file():
            raise LoraUnavailable(f"LoRA {path}: no such file")
        return path
    import huggingface_hub

    weight_name = lora.weight_name or LORA_WEIGHT_NAME
    try:
        return Path(huggingface_hub.hf_hub_download(lora.source, weight_name))
    except OSError as err:  # every hub error: offline and not cached, no such repository or file, gated
        raise LoraUnavailable(f"LoRA {lora.source}/{weight_name}: not in the Hugging Face cache and the hub did not "
                              f"give it ({_reason(err)}); where the hub is reachable: hf download {lora.source} "
                              f"{weight_name}") from err


def _header_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors of their shapes, except scalars (alphas), which are read."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {}
            for key in f.keys():
                part = f.get_slice(key)
                shape = part.get_shape()
                if len(shape) == 0 or (len(shape) == 1 and shape[0] == 1):
                    tensors[key] = f.get_tensor(key)
                else:
                    tensors[key] = torch.empty(shape, device="meta")
            return tensors
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraUnavailable(f"LoRA {path}: not a readable .safetensors file ({_reason(err)})") from err


def _diffusers_layers(path: Path, pipeline_cls: type) -> dict[str, dict[str, torch.Size]]:
    """Layer name inside the transformer -> {lora_A.weight: shape, ...}, converted as `pipeline_cls` loads it."""
    if not hasattr(pipeline_cls, "lora_state_dict"):
        raise LoraUnavailable(f"LoRA {path}: {pipeline_cls.__name__} does not load LoRAs")
    state = _header_state_dict(path)
    try:
        converted = pipeline_cls.lora_state_dict(state)
    except Exception as err:  # the converters raise bare ValueError/KeyError on layouts they do not know
        raise LoraUnavailable(f"LoRA {path}: not a LoRA layout {pipeline_cls.__name__} knows "
                              f"({type(err).__name__}: {_reason(err)})") from err
    layers: dict[str, dict[str, torch.Size]] = {}
    for key, tensor in converted.items():
        name = key.removeprefix("transformer.")
        param = next((p for p in LORA_PARAMS if name.endswith("." + p)), None)
        if param is None:
            raise LoraUnavailable(f"LoRA {path}: {key} is not a LoRA weight of the transformer")
        layers.setdefault(name.removesuffix("." + param), {})[param] = tensor.shape
    if not layers:
        raise LoraUnavailable(f"LoRA {path}: holds no LoRA weights")
    return layers


def check_lora_fits(path: Path, pipeline_cls: type, transformer: torch.nn.Module, target: str) -> None:
    """LoraUnavailable unless every layer of the LoRA at `path` is a linear layer of `transformer` (a meta
    module is enough) with the LoRA's input and output widths."""
    import torch

    where = f"{type(transformer).__name__} {target}"
    for name, shapes in _diffusers_layers(path, pipeline_cls).items():
        try:
            layer = transformer.get_submodule(name)
        except AttributeError as err:
            raise LoraUnavailable(f"LoRA {path}: {name} is not a layer of the {where}") from err
        if not isinstance(layer, torch.nn.Linear):
            raise LoraUnavailable(f"LoRA {path}: {name} is a {type(layer).__name__}, not a linear layer")
        down, up = shapes.get("lora_A.weight"), shapes.get("lora_B.weight")
        if down is None or up is None:
            raise LoraUnavailable(f"LoRA {path}: {name} lacks its lora_A or lora_B weight")
        if down[1] != layer.in_features or up[0] != layer.out_features or down[0] != up[1]:
            raise LoraUnavailable(
                f"LoRA {path}: {name} is {down[1]} -> {up[0]} at rank {down[0]}/{up[1]}, but the {where} has "
                f"{layer.in_features} -> {layer.out_features} there (a LoRA for another model?)"
            )


def _transformer_config(i2v_checkpoint: str, target: str) -> dict | None:
    """config.json of the checkpoint's `target` component, or None where it cannot be had without downloading
    weights (the ranks then find out as they load)."""
    local = Path(i2v_checkpoint)
    if local.is_absolute():
        path = local / target / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    import huggingface_hub

    try:
        return json.loads(Path(huggingface_hub.hf_hub_download(i2v_checkpoint, f"{target}/config.json")).read_text())
    except OSError:
        return None


def meta_transformer(config: dict) -> torch.nn.Module:
    """The transformer a config.json describes, on the meta device (no memory, no weights)."""
    import diffusers
    import torch

    cls = getattr(diffusers, config["_class_name"])
    with torch.device("meta"):
        return cls.from_config(config)


def _pipeline_class(name: str) -> type:
    """diffusers pipeline class `name`, imported without transformers' import-time warnings (the CLI's error
    output is one line)."""
    import diffusers
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return getattr(diffusers, name)
    finally:
        transformers_logging.set_verbosity(verbosity)


def check_loras(loras: tuple[LoraSpec, ...], pipeline_name: str, i2v_checkpoint: str) -> None:
    """LoraUnavailable (one line naming the file) for the first LoRA that is missing, unreadable or does not fit
    the transformer it targets in `i2v_checkpoint` (a local directory or a cached hub id)."""
    if not loras:
        return
    pipeline_cls = _pipeline_class(pipeline_name)
    transformers: dict[str, torch.nn.Module | None] = {}
    for lora in loras:
        path = lora_file(lora)
        if lora.target not in transformers:
            config = _transformer_config(i2v_checkpoint, lora.target)
            transformers[lora.target] = meta_transformer(config) if config else None
        if transformers[lora.target] is None:
            if Path(i2v_checkpoint).is_absolute():
                raise LoraUnavailable(f"LoRA {path}: targets {lora.target}, which {i2v_checkpoint} does not have")
            logger.info("cannot check LoRA %s before loading: %s/config.json is not cached", path, lora.target)
            continue
        check_lora_fits(path, pipeline_cls, transformers[lora.target], lora.target)


def fuse_loras(pipe, loras: tuple[LoraSpec, ...]) -> None:
    """Load each LoRA into `pipe`'s target transformer, fuse it at its scale and drop the adapter, leaving plain
    layers with the fused weights (what quantization and sequence parallelism expect)."""
    from safetensors.torch import load_file

    for i, lora in enumerate(loras):
        path = lora_file(lora)
        name = f"lora{i}"
        try:
            pipe.load_lora_weights(load_file(str(path)), adapter_name=name,
                                   load_into_transformer_2=lora.target == "transformer_2")
        except (ValueError, RuntimeError, KeyError) as err:
            raise LoraUnavailable(f"LoRA {path}: diffusers cannot load it into {lora.target}: {_reason(err)}") from err
        pipe.fuse_lora(components=[lora.target], lora_scale=lora.scale, adapter_names=[name])
        pipe.unload_lora_weights()
        logger.info("fused LoRA %s into %s at scale %g", path, lora.target, lora.scale)

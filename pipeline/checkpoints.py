"""Where a preset's checkpoints are: built in (embedded://), a local directory, or the Hugging Face hub.

`checkpoint_paths` answers before anything heavy loads, so a checkpoint that is neither local nor
downloadable is one error naming the model and the two ways out (download it into the cache, or point
the preset at a local copy), not a traceback from inside `from_pretrained` on every rank.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.presets import Preset, checkpoint_kind, preset_path
from pipeline.tiny import resolve_embedded

logger = logging.getLogger(__name__)

INDEX = "model_index.json"


class CheckpointUnavailable(ValueError):
    """A preset names a checkpoint that is neither on this machine nor downloadable."""


def _hub_checkpoint(repo_id: str) -> str:
    """`repo_id` if its pipeline index is in the Hugging Face cache or downloads; else CheckpointUnavailable."""
    import huggingface_hub
    from huggingface_hub import constants

    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, INDEX), str):
        return repo_id
    cache = f"not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if huggingface_hub.is_offline_mode():
        raise CheckpointUnavailable(f"{cache}, and HF_HUB_OFFLINE forbids downloading it")
    try:
        huggingface_hub.hf_hub_download(repo_id, INDEX)
    except OSError as err:  # every hub error: offline, no such repository, gated, connection refused
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointUnavailable(f"{cache}, and the hub did not give it: {reason}") from err
    return repo_id


def locate_checkpoint(model: str, cache_dir: Path) -> str:
    """What `from_pretrained` should load for `model`: a directory (embedded checkpoints are built on first
    use) or a hub id that is cached or downloadable. Raises CheckpointUnavailable with the reason."""
    kind = checkpoint_kind(model)
    if kind == "embedded":
        return str(resolve_embedded(model, cache_dir))
    if kind == "local":
        if not (Path(model) / INDEX).is_file():
            raise CheckpointUnavailable(f"{model}/{INDEX} does not exist: not a diffusers pipeline directory")
        return model
    return _hub_checkpoint(model)


def checkpoint_paths(preset: Preset, cache_dir: Path, preset_file: Path | None = None) -> tuple[str, str]:
    """The I2V and T2I checkpoints `from_pretrained` should load for `preset`.

    Raises one CheckpointUnavailable naming every checkpoint that is missing and saying how to get it (by
    editing `preset_file`; default: the shipped preset of that name).
    """
    found, missing = {}, []
    for field in ("i2v_model", "t2i_model"):
        model = getattr(preset, field)
        try:
            found[field] = locate_checkpoint(model, cache_dir)
        except CheckpointUnavailable as err:
            missing.append((field, model, str(err)))
    if missing:
        raise CheckpointUnavailable(_how_to_fix(preset, missing, preset_file or preset_path(preset.name)))
    return found["i2v_model"], found["t2i_model"]


def _how_to_fix(preset: Preset, missing: list[tuple[str, str, str]], preset_file: Path) -> str:
    lines = [f"preset {preset.name!r} cannot load its checkpoints:"]
    lines += [f"  {field} {model}: {reason}" for field, model, reason in missing]
    hub = [model for _, model, _ in missing if checkpoint_kind(model) == "hub"]
    if hub:
        lines.append("Download them where the hub is reachable, into the cache the ranks read (HF_HOME):")
        lines += [f"  hf download {model}" for model in hub]
        lines.append("or point the preset at a local copy (a diffusers pipeline directory holding model_index.json):")
    else:
        lines.append("Point the preset at a local copy (a diffusers pipeline directory holding model_index.json):")
    fields = " and ".join(dict.fromkeys(field for field, _, _ in missing))
    lines.append(f"  set {fields} to the directory's absolute path in {preset_file}")
    return "\n".join(lines)

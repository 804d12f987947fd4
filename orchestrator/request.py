"""RenderRequest: what a user asks for, validated at every edge (CLI, HTTP, batch)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.presets import ContinuityMode, LoraSpec, parse_loras

MAX_DURATION_S = 3600.0


class StoryboardEntry(BaseModel):
    """From `at_s` on, segments use `prompt`; `image`, if given, is the keyframe nearest `at_s`."""

    model_config = ConfigDict(extra="forbid")

    at_s: float = Field(ge=0, description="Time in seconds from which this entry applies.")
    prompt: str = Field(min_length=1, max_length=2000, description="Prompt from at_s on.")
    image: str | None = Field(None, description="Image path used as the keyframe nearest at_s.")


def load_storyboard(path: str | Path) -> list[StoryboardEntry]:
    """Read a storyboard (YAML or JSON list of {at_s, prompt, image?}); image paths are taken
    relative to the storyboard file."""
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"storyboard {str(path)!r} cannot be read: {err}") from err
    if not isinstance(entries, list):
        raise ValueError(f"storyboard {str(path)!r} must be a list of {{at_s, prompt, image}} entries")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("image"):
            entry["image"] = str((path.parent / entry["image"]).resolve())
    return [StoryboardEntry.model_validate(entry) for entry in entries]


class RenderRequest(BaseModel):
    """One video to render. Fields left None take the preset's (or the engine's) default."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(
        None, min_length=1, max_length=2000,
        description="Text prompt for every keyframe and segment (before the storyboard's first entry, if any).",
    )
    storyboard: list[StoryboardEntry] = Field(
        default_factory=list, max_length=1000, description="Per-time prompts and keyframe images, sorted by at_s."
    )
    image: str | None = Field(None, description="Path of an image to use as the first keyframe instead of T2I.")
    duration_s: float = Field(60.0, gt=0, le=MAX_DURATION_S, description="Length of the video in seconds.")
    fps: int | None = Field(
        None, ge=1, le=120, description="Output frame rate in frames per second (default: the preset's native rate)."
    )
    width: int | None = Field(None, ge=16, le=4096, description="Width in pixels (preset default if omitted).")
    height: int | None = Field(None, ge=16, le=4096, description="Height in pixels (preset default if omitted).")
    seed: int = Field(0, ge=0, lt=2**31, description="Seed from which every keyframe and segment seed derives.")
    preset: str = Field("tiny", description="Model preset (see `minutereel presets`).")
    mode: ContinuityMode | None = Field(
        None, description="Continuity mode: chain, keyframes or bridge (default: chain for one worker, else bridge)."
    )
    overlap_frames: int = Field(8, ge=1, le=64, description="Frames shared (and crossfaded) by neighbouring segments.")
    segment_frames: int | None = Field(
        None, ge=2, description="Longest segment in frames (default: the preset's maximum)."
    )
    steps: int | None = Field(None, ge=1, le=200, description="Denoising steps (preset default if omitted).")
    guidance: float | None = Field(None, ge=0, le=30, description="Guidance scale (preset default if omitted).")
    loras: tuple[LoraSpec, ...] | None = Field(
        None, max_length=16,
        description="LoRAs fused into the model after the preset's own: objects {source, weight_name, scale, target} "
                    "or strings PATH_OR_ID[:SCALE]. They must be the ones the rendering engine loaded (the CLI "
                    "loads what --lora names); omitted: the engine's.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("prompt is blank; give a description of the video")
        return value

    _parse_loras = field_validator("loras", mode="before")(parse_loras)

    @model_validator(mode="after")
    def _check_story(self) -> RenderRequest:
        if self.prompt is None and not self.storyboard:
            raise ValueError("give a prompt or a storyboard")
        times = [entry.at_s for entry in self.storyboard]
        if times != sorted(times):
            raise ValueError("storyboard entries must be sorted by at_s")
        for i, entry in enumerate(self.storyboard):
            if entry.at_s >= self.duration_s:
                raise ValueError(
                    f"storyboard[{i}].at_s {entry.at_s} is at or past the end of the video ({self.duration_s} s)"
                )
        return self

    def prompt_at(self, seconds: float) -> str:
        """The prompt in force at `seconds`: the last storyboard entry at or before it."""
        current = self.prompt or self.storyboard[0].prompt
        for entry in self.storyboard:
            if entry.at_s <= seconds:
                current = entry.prompt
        return current

    @property
    def total_frames(self) -> int:
        """Frames in the output video: round(duration_s * fps). The planner sets fps first."""
        if self.fps is None:
            raise ValueError("fps is not set; plan the request with its preset first")
        return round(self.duration_s * self.fps)

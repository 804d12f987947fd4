"""RenderRequest: what a user asks for, validated at every edge (CLI, HTTP, batch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.presets import ContinuityMode

MAX_DURATION_S = 3600.0


class RenderRequest(BaseModel):
    """One video to render. Fields left None take the preset's (or the engine's) default."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000, description="Text prompt for every keyframe and segment.")
    image: str | None = Field(None, description="Path of an image to use as the first keyframe instead of T2I.")
    duration_s: float = Field(60.0, gt=0, le=MAX_DURATION_S, description="Length of the video in seconds.")
    fps: int = Field(16, ge=1, le=120, description="Output frame rate in frames per second.")
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

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank; give a description of the video")
        return value

    @property
    def total_frames(self) -> int:
        """Frames in the output video: round(duration_s * fps)."""
        return round(self.duration_s * self.fps)

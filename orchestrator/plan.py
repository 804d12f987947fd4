"""RenderPlan: keyframes and segments, JSON-serialisable, independent of how many workers run it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.presets import ContinuityMode


class FrameRef(BaseModel):
    """A frame that conditions a segment: a keyframe, or frame `frame` of another segment."""

    model_config = ConfigDict(frozen=True)

    source: Literal["keyframe", "segment"]
    index: int = Field(ge=0, description="Keyframe or segment index.")
    frame: int = Field(0, ge=0, description="Frame within the segment (0 for keyframes).")


class KeyframeSpec(BaseModel):
    """A still that anchors the video at output frame `frame`."""

    index: int
    frame: int = Field(description="Output frame the keyframe stands at.")
    prompt: str
    seed: int
    source: Literal["image", "t2i"]
    image: str | None = Field(None, description="Image path when source is 'image'.")


class SegmentSpec(BaseModel):
    """One I2V render covering output frames [start_frame, start_frame + num_frames)."""

    index: int
    start_frame: int
    num_frames: int = Field(description="Frames rendered; frames past the video's end are dropped.")
    overlap_prev: int = Field(description="Leading frames shared with the previous segment.")
    overlap_next: int = Field(description="Trailing frames shared with the next segment.")
    wave: int = Field(description="Segments of one wave depend only on keyframes and earlier waves.")
    first: FrameRef
    last: FrameRef | None = None
    prompt: str
    seed: int

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.num_frames

    def dependencies(self) -> list[FrameRef]:
        return [ref for ref in (self.first, self.last) if ref is not None]


class RenderPlan(BaseModel):
    """Everything the scheduler needs; the same request always gives the same plan."""

    preset: str
    mode: ContinuityMode
    width: int
    height: int
    fps: int
    total_frames: int
    steps: int
    guidance: float
    keyframe_steps: int | None = Field(
        None, description="Denoising steps of the keyframe (T2I) model; None only in plans saved before plans "
                          "carried it (the engine fills it in from the preset)."
    )
    keyframe_guidance: float | None = Field(
        None, description="Guidance scale of the keyframe model; None as for keyframe_steps."
    )
    keyframes: list[KeyframeSpec]
    segments: list[SegmentSpec]
    weights: str | None = Field(
        None, description="Checkpoints and quantization of the engine that renders it (pipeline.presets."
                          "weights_id); set by the engine, not the planner. A job resumes only under the same."
    )

    def require_weights(self, weights: str, job_id: str) -> None:
        """ValueError if job `job_id`'s frames, rendered under this plan, came from other weights than
        `weights` (pipeline.presets.weights_id): the two would not mix into one video."""
        if self.weights is not None and self.weights != weights:
            raise ValueError(f"job {job_id} was rendered with {self.weights}, but {weights} is loaded now; "
                             "resume it with the same preset and --quantize, or use a new job directory")

    @property
    def waves(self) -> int:
        return 1 + max(s.wave for s in self.segments)

"""The OpenAI Videos API shape over minutereel jobs: request bodies in, Video objects and errors out.

Pure translation, no Ray: orchestrator/serve.py routes requests through these to the JobRunner. A
Video's `model` is a minutereel preset, `seconds` its length and `size` its "WIDTHxHEIGHT";
minutereel's own request fields (storyboard, mode, seed, ...) ride along as extra fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from orchestrator.request import MAX_DURATION_S, RenderRequest, StoryboardEntry
from pipeline.presets import ContinuityMode, LoraSpec, load_preset

DEFAULT_SECONDS = "4"
SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg);base64,(.*)$", re.DOTALL)
# A job's state as a Video's status: OpenAI has no "cancelled"; a cancelled video failed, error code "cancelled".
STATUS = {"queued": "queued", "planning": "queued", "rendering": "in_progress", "stitching": "in_progress",
          "done": "completed", "failed": "failed", "cancelled": "failed"}


class APIError(Exception):
    """An error answered in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class VideoFields(BaseModel):
    """`POST /v1/videos` fields (multipart form or JSON); `input_reference` is handled beside them."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, max_length=2000,
                               description="Text prompt for the whole video (or before the storyboard's first entry).")
    model: str | None = Field(None, description="A minutereel preset (`minutereel presets`; the embedded one is "
                                                "`tiny`); default: the one the server loaded.")
    seconds: float = Field(float(DEFAULT_SECONDS), gt=0, le=MAX_DURATION_S,
                           description="Length in seconds: OpenAI's \"4\", \"8\", \"12\" or any other length.")
    size: str | None = Field(None, description="WIDTHxHEIGHT in pixels, multiples of the preset's spatial multiple "
                                               "(default: the preset's size).")
    storyboard: list[StoryboardEntry] = Field(
        default_factory=list, max_length=1000,
        description="minutereel: [{at_s, prompt}] per-time prompts, sorted by at_s (a JSON string in a form).")
    mode: ContinuityMode | None = Field(None, description="minutereel: chain, keyframes or bridge.")
    seed: int = Field(0, ge=0, lt=2**31, description="minutereel: seed of every keyframe and segment.")
    fps: int | None = Field(None, ge=1, le=120, description="minutereel: frame rate (default: the preset's).")
    overlap_frames: int = Field(8, ge=1, le=64, description="minutereel: frames crossfaded between segments.")
    segment_frames: int | None = Field(None, ge=2, description="minutereel: longest segment in frames.")
    steps: int | None = Field(None, ge=1, le=200, description="minutereel: denoising steps.")
    guidance: float | None = Field(None, ge=0, le=30, description="minutereel: guidance scale.")
    loras: list[LoraSpec | str] | None = Field(
        None, max_length=16, description="minutereel: LoRAs, {source, weight_name, scale, target} or "
                                         "PATH_OR_ID[:SCALE] (a JSON list in a form); they must be the ones the "
                                         "server loaded; omitted: the server's.")

    @field_validator("storyboard", "loras", mode="before")
    @classmethod
    def _list_from_text(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):  # a form field carries JSON text
            try:
                return json.loads(value) if value.strip() else cls.model_fields[info.field_name].get_default(
                    call_default_factory=True)
            except json.JSONDecodeError as err:
                raise ValueError(f"not a JSON list: {err}") from err
        return value

    @field_validator("storyboard")
    @classmethod
    def _no_server_paths(cls, value: list[StoryboardEntry]) -> list[StoryboardEntry]:
        if any(entry.image for entry in value):
            raise ValueError("storyboard images are not accepted over HTTP (they would be server paths)")
        return value


class ExtendFields(BaseModel):
    """`POST /v1/videos/extensions` fields: continue a finished video from its last frame, in chain mode."""

    model_config = ConfigDict(extra="forbid")

    video: str | None = Field(None, description="Id of the finished video to extend (form: `video[id]`; JSON: "
                                                "{\"id\": ...}); or, in a form, an uploaded video file.")
    prompt: str = Field(min_length=1, max_length=2000, description="Prompt of the added seconds.")
    seconds: float = Field(gt=0, le=MAX_DURATION_S, description="Seconds to add.")
    seed: int | None = Field(None, ge=0, lt=2**31, description="minutereel: seed (default: the source video's).")

    @field_validator("video", mode="before")
    @classmethod
    def _video_id(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value.get("id")
        return value


class RemixFields(BaseModel):
    """`POST /v1/videos/{id}/remix`: the same video (size, length, seed, first frame) with another prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000, description="The new prompt.")


def form_to_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Multipart fields as a dict; `video[id]` (how the SDK sends {"video": {"id": ...}}) becomes `video`."""
    fields: dict[str, Any] = {}
    for key, value in items:
        fields["video" if key == "video[id]" else key] = value
    return fields


def parse(model: type[BaseModel], data: Any) -> Any:
    """`data` validated as `model`; a 400 naming the first bad field otherwise."""
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object or a form")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}" if param else message, param=param,
                       code="invalid_value") from err


def parse_size(size: str | None, preset_name: str, param: str = "size") -> tuple[int | None, int | None]:
    """`size` as (width, height), checked against the preset's spatial multiple and largest area."""
    if size is None:
        return None, None
    match = SIZE.match(size)
    if not match:
        raise APIError(400, f"size {size!r} is not WIDTHxHEIGHT, e.g. \"128x128\"", param=param, code="invalid_value")
    width, height = int(match[1]), int(match[2])
    preset = load_preset(preset_name)
    multiple = preset.spatial_multiple
    if width % multiple or height % multiple or not width or not height:
        near = [max(multiple, round(v / multiple) * multiple) for v in (width, height)]
        raise APIError(400, f"size {size!r}: width and height must be multiples of {multiple} for model "
                            f"{preset.name!r}; try \"{near[0]}x{near[1]}\"", param=param, code="invalid_value")
    if width * height > preset.max_area:
        raise APIError(400, f"size {size!r} is over the {preset.max_area} pixels model {preset.name!r} renders",
                       param=param, code="invalid_value")
    return width, height


def check_model(name: str) -> None:
    try:
        load_preset(name)
    except ValueError as err:
        raise APIError(400, str(err), param="model", code="model_not_found") from err


def render_request(fields: VideoFields, default_model: str) -> RenderRequest:
    """The RenderRequest a `POST /v1/videos` asks for; `default_model`: the server's preset."""
    model = fields.model or default_model
    check_model(model)
    width, height = parse_size(fields.size, model)
    values = fields.model_dump(exclude={"model", "seconds", "size"}, exclude_none=True)
    values.update(preset=model, duration_s=fields.seconds, width=width, height=height)
    return _request(values, None)


def extension_request(fields: ExtendFields, kept: dict, shape: dict) -> RenderRequest:
    """The chain-mode RenderRequest that continues a video for `fields.seconds`: `kept` is the source's request
    (seed, overlap, steps, ...), `shape` its preset, fps, width and height. One frame more than asked: the source's
    last frame, which the render starts from, appears once in the stitched output."""
    values = {name: kept.get(name) for name in ("seed", "overlap_frames", "segment_frames", "steps", "guidance",
                                                 "loras")}
    values.update({name: shape[name] for name in ("preset", "fps", "width", "height")})
    values.update(prompt=fields.prompt, duration_s=fields.seconds + 1 / shape["fps"], mode="chain")
    if fields.seed is not None:
        values["seed"] = fields.seed
    return _request(values, "seconds")


def _request(values: dict, param: str | None) -> RenderRequest:
    try:
        return RenderRequest.model_validate(values)
    except ValidationError as err:
        raise APIError(400, err.errors()[0]["msg"].removeprefix("Value error, "), param=param,
                       code="invalid_value") from err


def reference_image(value: Any) -> bytes | None:
    """An `input_reference` JSON value: {"image_url": "data:image/png;base64,..."}; no remote URLs or files."""
    if value is None:
        return None
    url = value.get("image_url") if isinstance(value, dict) else None
    match = DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise APIError(400, "input_reference must be an uploaded image, or {\"image_url\": \"data:image/png;base64,"
                            "...\"}; remote URLs and file ids are not fetched", param="input_reference",
                       code="invalid_value")
    try:
        return base64.b64decode(match[2], validate=True)
    except binascii.Error as err:
        raise APIError(400, f"input_reference is not base64: {err}", param="input_reference",
                       code="invalid_value") from err


def format_seconds(seconds: float) -> str:
    """4.0 -> "4", 2.5 -> "2.5" (the API's seconds are strings)."""
    return f"{seconds:g}"


def _progress(state: dict) -> int:
    """0-100: the share of keyframes and segments done (never going back, unlike a segment's denoising step,
    which restarts with each segment); 100 only once the video is written."""
    if state["state"] == "done":
        return 100
    p = state["progress"]
    units = p["keyframes_total"] + p["segments_total"]
    return min(99, 100 * (p["keyframes_done"] + p["segments_done"]) // units) if units else 0


def _seconds(request: dict, plan: dict | None, prefix: dict | None) -> str:
    """The asked length, or for an extension the stitched total: the video it continues, then its own frames."""
    if prefix is None or plan is None:
        return format_seconds(request["duration_s"])
    return format_seconds(round((prefix["frames"] + plan["total_frames"]) / plan["fps"], 3))


def video_object(job: dict) -> dict:
    """The OpenAI Video object of a JobRunner `describe`: id, object, status, progress, times, model, seconds,
    size, error, plus `render` (minutereel's own state, progress and history)."""
    state, request, plan, notes, prefix = (job[key] for key in ("state", "request", "plan", "annotations", "prefix"))
    status = STATUS[state["state"]]
    error = None
    if state["state"] in ("failed", "cancelled"):
        error = {"code": "cancelled" if state["state"] == "cancelled" else "render_failed",
                 "message": state["error"] or state["state"]}
    if plan:
        width, height = plan["width"], plan["height"]
    else:  # created, not planned yet
        preset = load_preset(request["preset"])
        width, height = request["width"] or preset.default_width, request["height"] or preset.default_height
    return {
        "id": state["id"],
        "object": "video",
        "status": status,
        "progress": _progress(state),
        "created_at": int(state["created_at"]),
        "completed_at": int(state["updated_at"]) if status in ("completed", "failed") else None,
        "expires_at": None,
        "model": request["preset"],
        "prompt": request["prompt"] or (request["storyboard"][0]["prompt"] if request["storyboard"] else None),
        "seconds": _seconds(request, plan, prefix),
        "size": f"{width}x{height}",
        "error": error,
        "remixed_from_video_id": notes.get("remixed_from_video_id"),
        "extended_from_video_id": prefix["source"] if prefix else None,
        "render": {key: state[key] for key in ("state", "progress", "history")},
    }


def video_plan(video_id: str, states: dict) -> dict:
    """A video's timeline from JobRunner `task_states`: its plan's keyframes and segments, in output frames and
    seconds, each with its state (done, running or waiting). An extension's plan covers only its added frames."""
    plan = states["plan"]
    fps = plan["fps"]
    keyframes = [{"index": spec["index"], "frame": spec["frame"], "at_s": round(spec["frame"] / fps, 3),
                  "prompt": spec["prompt"], "source": spec["source"], "state": state}
                 for spec, state in zip(plan["keyframes"], states["keyframes"], strict=True)]
    segments = [{"index": spec["index"], "start_frame": spec["start_frame"],
                 "end_frame": min(spec["start_frame"] + spec["num_frames"], plan["total_frames"]),
                 "wave": spec["wave"], "prompt": spec["prompt"], "state": state}
                for spec, state in zip(plan["segments"], states["segments"], strict=True)]
    return {"object": "video.plan", "id": video_id, "mode": plan["mode"], "fps": fps,
            "total_frames": plan["total_frames"], "steps": plan["steps"], "keyframes": keyframes,
            "segments": segments}


def model_list(preset: str) -> dict:
    """OpenAI's model list: the one preset a server renders."""
    return {"object": "list", "data": [{"id": preset, "object": "model", "created": 0, "owned_by": "minutereel"}]}


def video_list(page: dict) -> dict:
    """A page of `list_jobs` as the OpenAI list object the SDK's cursor page reads."""
    data = [video_object(job) for job in page["data"]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": page["has_more"]}

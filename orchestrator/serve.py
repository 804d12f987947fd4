"""The Ray Serve application: the OpenAI Videos API as a thin FastAPI ingress over the JobRunner actor.

Long renders are jobs: `POST /v1/videos` answers at once with a queued Video object; polling,
listing, content, deletion and extension are separate routes. No handler blocks on rendering: each
awaits a short call on the runner. The official `openai` SDK works against it unchanged.

    serve run orchestrator.serve:build_app jobs_root=/data/jobs      # or: minutereel serve
    serve deploy configs/serve.yaml

`GET /` is the studio page (orchestrator/static/): plain HTML and JS over the same API.
"""

import asyncio
import hmac
import io
import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.config import ParallelConfig
from orchestrator import environment
from orchestrator import openai_api as oa
from orchestrator.config import EngineConfig
from orchestrator.jobs import TERMINAL, JobStore
from orchestrator.request import RenderRequest
from orchestrator.runner import ON_HEAD_NODE, NotFinished, QueueFull, check_image, start_runner
from pipeline.config import ModelConfig, StitchConfig

EVENT_POLL_S = 0.25
MAX_IMAGE_BYTES = 16 * 2**20  # an input_reference upload, after base64 decoding
MAX_VIDEO_BYTES = 256 * 2**20  # a video uploaded to be extended
MAX_STILLS = 64  # a spritesheet shows at most this many stills, evenly chosen
SPRITESHEET_COLUMNS = 8
STATIC = Path(__file__).with_name("static")
STUDIO_FILES = {"studio.js": "text/javascript", "studio.css": "text/css",
                "hls.light.min.js": "text/javascript"}  # hls.js 1.7.4, vendored (Apache-2.0: hls.js.LICENSE)
# The page and its files hold no data (a browser cannot send a bearer token when it navigates); every
# request the page makes for data carries the token typed into it.
OPEN_PATHS = frozenset({"/healthz", "/", *(f"/studio/{name}" for name in STUDIO_FILES)})


class ServeSettings(BaseModel):
    """The application's arguments (the `args:` of configs/serve.yaml)."""

    model_config = ConfigDict(extra="forbid")

    jobs_root: str = Field(description="Directory holding one folder per job.")
    max_active_jobs: int = Field(8, ge=1, description="Unfinished jobs accepted before POST answers 429.")
    runner_name: str = Field("minutereel-runner", description="Name of the JobRunner actor.")
    api_token: str | None = Field(None, description="Bearer token every route but /healthz requires (None: open).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Preset and quantization.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Worker pool shape.")
    stitch: StitchConfig = Field(default_factory=StitchConfig, description="Blending and encoding.")


class VideoCreateJSON(oa.VideoFields):
    """`POST /v1/videos` as JSON. As multipart/form-data, `input_reference` is an image file instead and
    `storyboard` is JSON text."""

    input_reference: dict[str, str] | None = Field(
        None, description="The first keyframe: {\"image_url\": \"data:image/png;base64,...\"} (PNG or JPEG).")


class VideoCreateForm(oa.VideoFields):
    """`POST /v1/videos` as multipart/form-data (what the openai SDK sends)."""

    input_reference: bytes | None = Field(None, json_schema_extra={"format": "binary"},
                                          description="The first keyframe, a PNG or JPEG file.")


class ExtendForm(oa.ExtendFields):
    """`POST /v1/videos/extensions` as multipart/form-data: `video[id]`, or a video file."""

    video: bytes | None = Field(None, json_schema_extra={"format": "binary"},
                                description="A video file to extend (MP4, sizes and frame rate the preset takes).")


class VideoDeleted(BaseModel):
    id: str = Field(description="Id of the deleted video.")
    object: Literal["video.deleted"] = Field("video.deleted", description="Always video.deleted.")
    deleted: bool = Field(True, description="The video and everything of its job are gone.")


app = FastAPI(
    title="minutereel",
    description="Minute-long video renders as jobs, in the OpenAI Videos API shape: create, poll, download, "
                "list, delete, extend. Errors are {\"error\": {message, type, param, code}}.",
    version="0.1.0",
)


def _body(*models: tuple[str, type[BaseModel]]) -> dict:
    """openapi_extra declaring a request body the handler parses itself, one schema per content type."""
    return {"requestBody": {"required": True, "content": {
        kind: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}} for kind, model in models}}}


BODY_SCHEMAS = (VideoCreateJSON, VideoCreateForm, oa.ExtendFields, ExtendForm, oa.RemixFields)


def _openapi() -> dict:
    """FastAPI's schema plus the bodies the create, extend and remix handlers parse by hand."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_SCHEMAS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi


PIECE_NAME = re.compile(r"^(\d{5}(-lead)?|prefix)\.ts$")  # what the sink names a preview's pieces


@app.exception_handler(oa.APIError)
async def _api_error(_request: Request, err: oa.APIError) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=err.body(), headers=err.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    return await _api_error(_request, oa.APIError(err.status_code, str(err.detail), code=code))


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0]
    param = ".".join(str(part) for part in first["loc"][1:]) or None
    return await _api_error(_request, oa.APIError(400, f"{param}: {first['msg']}", param=param, code="invalid_value"))


def _reason(err: Exception) -> str:
    """The message of the error an actor raised, without Ray's traceback around it."""
    cause = getattr(err, "cause", None)
    return str(cause if cause is not None else err)


def _not_found(video_id: str, param: str | None = None) -> oa.APIError:
    return oa.APIError(404, f"no video {video_id!r}", param=param, code="video_not_found")


def _upload_limit(size: int, field: str = "input_reference", limit: int = MAX_IMAGE_BYTES) -> None:
    if size > limit:
        raise oa.APIError(413, f"{field} is over {limit // 2**20} MiB", param=field, code="file_too_large")


async def _read_body(request: Request, field: str = "input_reference",
                     limit: int = MAX_IMAGE_BYTES) -> tuple[dict[str, Any], bytes | None]:
    """A JSON or form body as a dict, and the bytes of the file uploaded as form field `field`, if any."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            return await request.json(), None
        except ValueError as err:
            raise oa.APIError(400, f"the body is not JSON: {err}", code="invalid_json") from err
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise oa.APIError(400, f"send multipart/form-data or application/json, not {kind or 'no content type'}",
                          code="unsupported_content_type")
    form = await request.form(max_files=1, max_fields=64)
    fields = oa.form_to_dict([(k, v) for k, v in form.multi_items() if not isinstance(v, UploadFile)])
    upload = form.get(field)
    data = None
    if isinstance(upload, UploadFile):
        _upload_limit(upload.size or 0, field, limit)
        data = await upload.read(limit + 1)
        _upload_limit(len(data), field, limit)
    return fields, data


def _reference(data: dict[str, Any], image: bytes | None) -> bytes | None:
    """The first keyframe's bytes from an upload or a JSON data URL, checked as a PNG or JPEG."""
    value = data.pop("input_reference", None)
    if image is None and value not in (None, ""):
        url = value.get("image_url") if isinstance(value, dict) else None
        if isinstance(url, str) and len(url) > MAX_IMAGE_BYTES * 4 // 3 + 64:
            _upload_limit(MAX_IMAGE_BYTES + 1)
        image = oa.reference_image(value)
    if image is not None:
        _upload_limit(len(image))
        try:
            check_image(image)
        except ValueError as err:
            raise oa.APIError(400, f"input_reference: {err}", param="input_reference", code="invalid_image") from err
    return image


def _video_shape(data: bytes) -> tuple[int, int, int]:
    """Width, height (pixels) and whole frame rate of an uploaded video, from its header; 400 if unreadable."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = stream.average_rate or stream.guessed_rate
    except (av.FFmpegError, IndexError, OSError, ValueError) as err:
        raise oa.APIError(400, f"video: not a readable video file ({err})", param="video",
                          code="invalid_video") from err
    if not fps or fps.denominator != 1 or not 1 <= fps <= 120:
        raise oa.APIError(400, f"video: frame rate {fps} is not a whole number of frames per second from 1 to 120; "
                               "convert it with ffmpeg first", param="video", code="invalid_video")
    return width, height, int(fps)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def spritesheet(stills: list[np.ndarray]) -> np.ndarray:
    """Stills in time order as one image, left to right then top to bottom, SPRITESHEET_COLUMNS a row; at
    most MAX_STILLS, evenly chosen."""
    if len(stills) > MAX_STILLS:
        stills = [stills[i] for i in np.linspace(0, len(stills) - 1, MAX_STILLS).round().astype(int)]
    columns = min(SPRITESHEET_COLUMNS, len(stills))
    rows = -(-len(stills) // columns)
    height, width = stills[0].shape[:2]
    sheet = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, still in enumerate(stills):
        row, column = divmod(i, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = still
    return sheet


@app.middleware("http")
async def require_token(request: Request, call_next):
    """With an api_token set, every route but /healthz and the studio page's files needs `Authorization: Bearer
    <token>`."""
    # Serve runs a frozen copy of `app` in each replica, out of the deployment's reach; build_app
    # hands the token to the replica process through its environment instead.
    token = environment.api_token()
    if token and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            err = oa.APIError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse(status_code=401, content=err.body(), headers=err.headers)
    return await call_next(request)


@serve.deployment(ray_actor_options={"num_cpus": 0, "resources": ON_HEAD_NODE}, max_ongoing_requests=64)
@serve.ingress(app)
class RenderAPI:
    """HTTP routes; rendering happens on the runner's worker pool, never here."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = ServeSettings.model_validate(settings)
        engine = EngineConfig(model=self.settings.model, parallel=self.settings.parallel, stitch=self.settings.stitch)
        self.runner = start_runner(engine, self.settings.jobs_root, self.settings.max_active_jobs,
                                   self.settings.runner_name)
        self.store = JobStore(Path(self.settings.jobs_root))  # read here: the ingress runs on the head, beside it

    async def _describe(self, video_id: str, param: str | None = None) -> dict:
        try:
            return await self.runner.describe.remote(video_id)
        except KeyError as err:
            raise _not_found(video_id, param) from err

    async def _video(self, video_id: str) -> dict:
        return oa.video_object(await self._describe(video_id))

    async def _submit(self, request: RenderRequest, **options) -> dict:
        """Queue `request` on the runner; its Video object, or the OpenAI error for why not."""
        try:
            job_id = await self.runner.submit.remote(request, **options)
        except QueueFull as err:
            raise oa.APIError(429, _reason(err), code="queue_full", type="rate_limit_error",
                              headers={"Retry-After": "10"}) from err
        except NotFinished as err:
            raise oa.APIError(409, _reason(err), param="video", code="video_not_ready") from err
        except KeyError as err:
            raise _not_found(str(options.get("continues")), "video") from err
        except ValueError as err:  # the planner refuses this combination of fields
            raise oa.APIError(422, _reason(err), code="unprocessable_request") from err
        return await self._video(job_id)

    @app.post("/v1/videos", openapi_extra=_body(("application/json", VideoCreateJSON),
                                                 ("multipart/form-data", VideoCreateForm)))
    async def create_video(self, request: Request) -> dict:
        """Queue a render; answers at once with the queued Video (400/413 for bad fields or image, 422 for a
        request the planner refuses, 429 when the queue is full)."""
        data, upload = await _read_body(request)
        image = _reference(data, upload) if isinstance(data, dict) else None
        render = oa.render_request(oa.parse(oa.VideoFields, data), self.settings.model.preset)
        return await self._submit(render, image=image)

    @app.get("/v1/videos")
    async def list_videos(self, after: str | None = Query(None, description="Id of the last video of the "
                                                                               "previous page."),
                          limit: int = Query(20, ge=1, le=100, description="Videos per page."),
                          order: Literal["asc", "desc"] = Query("desc", description="By creation time.")) -> dict:
        """Videos by creation time, a page at a time: {object: list, data, first_id, last_id, has_more}."""
        try:
            page = await self.runner.list_jobs.remote(after, limit, order)
        except KeyError as err:
            raise oa.APIError(400, f"after: no video {after!r}", param="after", code="invalid_value") from err
        return oa.video_list(page)

    @app.get("/v1/videos/{video_id}")
    async def retrieve_video(self, video_id: str) -> dict:
        """The Video object: status queued|in_progress|completed|failed, progress 0-100, error."""
        return await self._video(video_id)

    @app.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
    async def delete_video(self, video_id: str) -> VideoDeleted:
        """Cancel the render if it runs (it stops at its next denoising step), then remove the job."""
        try:
            await self.runner.delete.remote(video_id)
        except KeyError as err:
            raise _not_found(video_id) from err
        return VideoDeleted(id=video_id)

    @app.post("/v1/videos/{video_id}/cancel")
    async def cancel_video(self, video_id: str) -> dict:
        """minutereel: stop the render but keep the job (its Video ends failed, error code cancelled)."""
        try:
            await self.runner.cancel.remote(video_id)
        except KeyError as err:
            raise _not_found(video_id) from err
        return await self._video(video_id)

    @app.get("/v1/videos/{video_id}/content")
    async def video_content(self, video_id: str, variant: Literal["video", "thumbnail", "spritesheet"] = Query(
            "video", description="video: the MP4; thumbnail: the first keyframe (PNG); spritesheet: the frames the "
                                 "segments start from, in a grid (PNG).")):
        """The MP4 once completed (409 before); the thumbnail and spritesheet as soon as a keyframe exists."""
        if variant == "video":
            try:
                path = await self.runner.output_path.remote(video_id)
            except KeyError as err:
                raise _not_found(video_id) from err
            if path is None:
                raise oa.APIError(409, f"video {video_id} is not completed; poll it", code="video_not_ready")
            return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")
        try:
            stills = await self.runner.stills.remote(video_id)
        except KeyError as err:
            raise _not_found(video_id) from err
        if not stills:
            raise oa.APIError(409, f"video {video_id} has no keyframe yet; poll it", code="video_not_ready")
        image = stills[0] if variant == "thumbnail" else spritesheet(stills)
        return Response(await asyncio.to_thread(_png, image), media_type="image/png")

    @app.get("/v1/videos/{video_id}/preview.m3u8")
    async def preview(self, video_id: str) -> Response:
        """minutereel: the live preview, an HLS event playlist of the pieces made so far (H.264 output only). It
        grows as segments are joined in order and ends with #EXT-X-ENDLIST; 409 before the first piece."""
        try:
            playlist = self.store.open(video_id).playlist
            text = await asyncio.to_thread(playlist.read_bytes)
        except (KeyError, FileNotFoundError) as err:
            if isinstance(err, KeyError):
                raise _not_found(video_id) from err
            raise oa.APIError(409, f"video {video_id} has no preview piece yet; poll it",
                              code="video_not_ready") from err
        return Response(text, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/videos/{video_id}/pieces/{name}", include_in_schema=False)
    async def preview_piece(self, video_id: str, name: str) -> FileResponse:
        """A piece the preview playlist names (MPEG-TS), from the job directory."""
        try:
            job = self.store.open(video_id)
        except KeyError as err:
            raise _not_found(video_id) from err
        path = job.pieces / name
        if not PIECE_NAME.match(name) or not path.is_file():
            raise oa.APIError(404, f"video {video_id} has no piece {name!r}", code="not_found",
                              type="invalid_request_error")
        return FileResponse(path, media_type="video/mp2t")

    @app.post("/v1/videos/extensions", openapi_extra=_body(("application/json", oa.ExtendFields),
                                                            ("multipart/form-data", ExtendForm)))
    async def extend_video(self, request: Request) -> dict:
        """A new video: a video followed by `seconds` more, continued from its last frame in chain mode (its
        `seconds` is the stitched total). The video is one of this server's, by id (404 if unknown, 409 if not
        completed), or an uploaded file (its size and frame rate must suit the server's preset)."""
        data, upload = await _read_body(request, "video", MAX_VIDEO_BYTES)
        fields = oa.parse(oa.ExtendFields, data)
        if upload is not None:
            width, height, fps = await asyncio.to_thread(_video_shape, upload)
            preset = self.settings.model.preset
            oa.parse_size(f"{width}x{height}", preset, param="video")
            kept, shape = RenderRequest(prompt=fields.prompt).model_dump(), {"preset": preset, "fps": fps,
                                                                             "width": width, "height": height}
        elif fields.video is not None:
            source = await self._describe(fields.video, "video")
            if source["plan"] is None or source["state"]["state"] != "done":
                raise oa.APIError(409, f"video {fields.video} is {oa.STATUS[source['state']['state']]}; only a "
                                       "completed video can be extended", param="video", code="video_not_ready")
            kept, shape = source["request"], source["plan"]
        else:
            raise oa.APIError(400, "video: give the id of a video to extend, or upload one", param="video",
                              code="invalid_value")
        render = oa.extension_request(fields, kept, shape)
        return await self._submit(render, continues=fields.video if upload is None else upload)

    @app.post("/v1/videos/{video_id}/remix", openapi_extra=_body(("application/json", oa.RemixFields)))
    async def remix_video(self, video_id: str, request: Request) -> dict:
        """A new video like `video_id` (model, size, length, seed, first frame) with another prompt."""
        data, _ = await _read_body(request)
        fields = oa.parse(oa.RemixFields, data)
        source = await self._describe(video_id)
        if source["prefix"] is not None:  # its own request renders only the added seconds
            raise oa.APIError(400, f"video {video_id} is an extension; remix the video it extends, then extend that",
                              code="invalid_value")
        kept = {**source["request"], "prompt": fields.prompt, "storyboard": [], "image": None}
        try:
            image = await self.runner.first_image.remote(video_id)
        except KeyError as err:
            raise _not_found(video_id) from err
        return await self._submit(RenderRequest.model_validate(kept), image=image,
                                  annotations={"remixed_from_video_id": video_id})

    @app.get("/v1/videos/{video_id}/plan")
    async def video_plan(self, video_id: str) -> dict:
        """minutereel: the timeline, every keyframe and segment of the plan (frames and seconds) with its state now:
        done, running or waiting (409 until planned)."""
        try:
            states = await self.runner.task_states.remote(video_id)
        except KeyError as err:
            raise _not_found(video_id) from err
        if states is None:
            raise oa.APIError(409, f"video {video_id} is not planned yet; poll it", code="video_not_ready")
        return oa.video_plan(video_id, states)

    @app.get("/v1/models")
    async def list_models(self) -> dict:
        """The presets this server renders (the one it loaded), as OpenAI's model list."""
        return oa.model_list(self.settings.model.preset)

    @app.get("/", include_in_schema=False)
    async def studio(self) -> FileResponse:
        """The studio page: write a prompt or storyboard, submit, watch the timeline, play the result."""
        return FileResponse(STATIC / "studio.html", media_type="text/html")

    @app.get("/studio/{name}", include_in_schema=False)
    async def studio_file(self, name: str) -> FileResponse:
        if name not in STUDIO_FILES:
            raise oa.APIError(404, f"no studio file {name!r}", code="not_found")
        return FileResponse(STATIC / name, media_type=STUDIO_FILES[name])

    @app.get("/v1/videos/{video_id}/events")
    async def events(self, video_id: str) -> StreamingResponse:
        """minutereel: Server-Sent Events, one `data:` line of the Video object per change, until it ends."""
        first = await self._describe(video_id)
        return StreamingResponse(self._stream(video_id, first), media_type="text/event-stream")

    async def _stream(self, video_id: str, job: dict):
        last = None
        while True:
            video = oa.video_object(job)
            if video != last:
                yield f"data: {json.dumps(video)}\n\n"
                last = video
            if job["state"]["state"] in TERMINAL:
                return
            await asyncio.sleep(EVENT_POLL_S)
            try:
                job = await self.runner.describe.remote(video_id)
            except KeyError:  # deleted while watched
                return

    @app.get("/metrics", response_class=Response)
    async def metrics(self) -> Response:
        """Prometheus text format: jobs by state, keyframes and segments rendered, segment render seconds,
        queue depth, live workers, frames encoded (kept by the runner, where the work happens)."""
        return Response(await self.runner.metrics_text.remote(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness, with the worker pool's occupancy."""
        return {"status": "ok", "workers": await self.runner.workers.remote()}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve entry point (`serve run orchestrator.serve:build_app`, configs/serve.yaml). The jobs
    root comes from args, else MINUTEREEL_JOBS_ROOT, else ./minutereel-jobs; the bearer token from
    args, else MINUTEREEL_API_TOKEN."""
    args = dict(args)
    args.setdefault("jobs_root", environment.jobs_root())
    args.setdefault("api_token", environment.api_token())
    try:
        settings = ServeSettings.model_validate(args)
    except ValidationError as err:
        raise ValueError(f"invalid minutereel serve settings: {err}") from err
    env = {environment.TOKEN_ENV: settings.api_token} if settings.api_token else {}
    options = {"num_cpus": 0, "resources": ON_HEAD_NODE, "runtime_env": {"env_vars": env}}
    return RenderAPI.options(ray_actor_options=options).bind(settings.model_dump(mode="json", exclude={"api_token"}))

"""The Ray Serve application: a thin FastAPI ingress in front of the JobRunner actor.

Long renders are jobs: POST answers 202 with an id at once; state, events, video and cancel are
separate routes. No handler blocks on rendering: each awaits a short call on the runner.

    serve run orchestrator.serve:build_app jobs_root=/data/jobs      # or: minutereel serve
    serve deploy configs/serve.yaml
"""

import asyncio
import base64
import binascii
import hmac
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.jobs import TERMINAL
from orchestrator.request import RenderRequest
from orchestrator.runner import ON_HEAD_NODE, QueueFull, start_runner
from pipeline.config import ModelConfig, StitchConfig

EVENT_POLL_S = 0.25
MAX_IMAGE_BYTES = 16 * 2**20  # a first-frame image upload, after base64 decoding
TOKEN_ENV = "MINUTEREEL_API_TOKEN"


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


class RenderBody(RenderRequest):
    """A render request over HTTP. Image paths on the server are not accepted."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prompt": "a fox", "duration_s": 4}]})

    image: None = Field(None, description="Not accepted over HTTP (a server path); send image_base64.")
    image_base64: str | None = Field(
        None, description=f"First keyframe as a base64 PNG or JPEG, at most {MAX_IMAGE_BYTES // 2**20} MiB decoded."
    )

    @model_validator(mode="after")
    def _no_server_paths(self) -> "RenderBody":
        if any(entry.image for entry in self.storyboard):
            raise ValueError("storyboard images are not accepted over HTTP (they would be server paths)")
        return self


class Submitted(BaseModel):
    id: str = Field(description="Job id.")
    status_url: str = Field(description="GET for state and progress.")
    events_url: str = Field(description="GET for Server-Sent Events until the job ends.")
    video_url: str = Field(description="GET for the MP4 once done.")


app = FastAPI(
    title="minutereel",
    description="Minute-long video renders as jobs: submit, watch progress, download, cancel.",
    version="0.1.0",
)


def _reason(err: Exception) -> str:
    """The message of the error an actor raised, without Ray's traceback around it."""
    cause = getattr(err, "cause", None)
    return str(cause if cause is not None else err)


def _decode_image(data: str | None) -> bytes | None:
    if data is None:
        return None
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise HTTPException(status_code=413, detail=f"image_base64 is over {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as err:
        raise HTTPException(status_code=422, detail=f"image_base64 is not base64: {err}") from err


def _not_found(job_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no render {job_id!r}")


@app.middleware("http")
async def require_token(request: Request, call_next):
    """With an api_token set, every route but /healthz needs `Authorization: Bearer <token>`."""
    # Serve runs a frozen copy of `app` in each replica, out of the deployment's reach; build_app
    # hands the token to the replica process through its environment instead.
    token = os.environ.get(TOKEN_ENV)
    if token and request.url.path != "/healthz":
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JSONResponse(status_code=401, content={"detail": "missing or wrong bearer token"},
                                headers={"WWW-Authenticate": "Bearer"})
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

    @app.post("/v1/renders", status_code=202, response_model=Submitted)
    async def submit(self, body: RenderBody, request: Request) -> Submitted:
        """Queue a render; answers at once with its id (413 for an oversize image, 429 when the queue is full)."""
        image = _decode_image(body.image_base64)
        fields = body.model_dump(exclude={"image", "image_base64"})
        try:
            job_id = await self.runner.submit.remote(RenderRequest.model_validate(fields), image=image)
        except QueueFull as err:
            raise HTTPException(status_code=429, detail=_reason(err), headers={"Retry-After": "10"}) from err
        except ValueError as err:
            raise HTTPException(status_code=422, detail=_reason(err)) from err
        base = str(request.url_for("status", job_id=job_id))
        return Submitted(id=job_id, status_url=base, events_url=f"{base}/events", video_url=f"{base}/video")

    @app.get("/v1/renders/{job_id}", name="status")
    async def status(self, job_id: str) -> dict:
        """State (queued, planning, rendering, stitching, done, failed, cancelled), progress and error."""
        try:
            return await self.runner.status.remote(job_id)
        except KeyError as err:
            raise _not_found(job_id) from err

    @app.get("/v1/renders/{job_id}/events")
    async def events(self, job_id: str) -> StreamingResponse:
        """Server-Sent Events: one `data:` line of state JSON per change, until the job ends."""
        first = await self.status(job_id)
        return StreamingResponse(self._stream(job_id, first), media_type="text/event-stream")

    async def _stream(self, job_id: str, state: dict):
        last = None
        while True:
            view = {k: state[k] for k in ("id", "state", "progress", "error", "history")}
            if view != last:
                yield f"data: {json.dumps(view)}\n\n"
                last = view
            if state["state"] in TERMINAL:
                return
            await asyncio.sleep(EVENT_POLL_S)
            state = await self.runner.status.remote(job_id)

    @app.get("/v1/renders/{job_id}/video", response_class=FileResponse)
    async def video(self, job_id: str):
        """The MP4 once the job is done (409 before)."""
        try:
            path = await self.runner.output_path.remote(job_id)
        except KeyError as err:
            raise _not_found(job_id) from err
        if path is None:
            raise HTTPException(status_code=409, detail="the video is not ready; watch the job's state")
        return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.delete("/v1/renders/{job_id}")
    async def cancel(self, job_id: str) -> dict:
        """Cancel: running segments stop at their next denoising step and free their workers."""
        try:
            return await self.runner.cancel.remote(job_id)
        except KeyError as err:
            raise _not_found(job_id) from err

    @app.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness, with the worker pool's occupancy."""
        return {"status": "ok", "workers": await self.runner.workers.remote()}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve entry point (`serve run orchestrator.serve:build_app`, configs/serve.yaml). The jobs
    root comes from args, else MINUTEREEL_JOBS_ROOT, else ./minutereel-jobs; the bearer token from
    args, else MINUTEREEL_API_TOKEN."""
    args = dict(args)
    args.setdefault("jobs_root", os.environ.get("MINUTEREEL_JOBS_ROOT") or str(Path("minutereel-jobs").resolve()))
    args.setdefault("api_token", os.environ.get(TOKEN_ENV) or None)
    try:
        settings = ServeSettings.model_validate(args)
    except ValidationError as err:
        raise ValueError(f"invalid minutereel serve settings: {err}") from err
    env = {TOKEN_ENV: settings.api_token} if settings.api_token else {}
    options = {"num_cpus": 0, "resources": ON_HEAD_NODE, "runtime_env": {"env_vars": env}}
    return RenderAPI.options(ray_actor_options=options).bind(settings.model_dump(mode="json", exclude={"api_token"}))

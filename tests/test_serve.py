"""The Ray Serve app over real HTTP: submit, progress, SSE, download, cancel, 429, errors."""

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from ray import serve

from pipeline.video_io import read_video

MAX_ACTIVE = 2
TOKEN = "test-token"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api(ray_cluster, tiny_cache, tmp_path_factory):
    """One Serve app for the session's HTTP tests, on a free loopback port."""
    from orchestrator.serve import build_app

    jobs = tmp_path_factory.mktemp("jobs")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"jobs_root": str(jobs), "max_active_jobs": MAX_ACTIVE, "runner_name": "test-runner",
                         "api_token": TOKEN, "model": {"cache_dir": str(tiny_cache)},
                         "parallel": {"workers": 2}}),
              name="minutereel", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    _wait(lambda: client.get("/healthz").status_code == 200, 120)
    yield client, jobs
    client.close()
    serve.shutdown()
    ray.kill(ray.get_actor("test-runner"))


def _wait(predicate, timeout_s, interval_s=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def _submit(client, **fields):
    response = client.post("/v1/renders", json={"prompt": "a fox", "mode": "chain", **fields})
    assert response.status_code == 202, response.text
    return response.json()


def _events(client, url):
    events = []
    with client.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return events


def test_submit_watch_events_and_download(api):
    client, _ = api
    submitted = _submit(client, duration_s=3.0, segment_frames=33)
    events = _events(client, submitted["events_url"])
    assert events[-1]["state"] == "done"
    assert events[-1]["history"] == ["queued", "planning", "rendering", "stitching", "done"]
    frames_seen = [e["progress"]["frames_written"] for e in events]
    assert frames_seen == sorted(frames_seen) and frames_seen[-1] == 48
    status = client.get(submitted["status_url"]).json()
    assert status["state"] == "done" and status["progress"]["segments_done"] == status["progress"]["segments_total"]
    video = client.get(submitted["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = api[1] / "downloaded.mp4"
    path.write_bytes(video.content)
    frames, info = read_video(path)
    assert (info.frames, info.fps, info.width, info.height) == (48, 16, 128, 128)


def test_two_jobs_share_the_pool(api):
    client, _ = api
    a = _submit(client, duration_s=6.0, segment_frames=21, overlap_frames=4, seed=1)
    b = _submit(client, duration_s=6.0, segment_frames=21, overlap_frames=4, seed=2)
    first_done = {}

    def one_done():
        states = {job["id"]: client.get(job["status_url"]).json() for job in (a, b)}
        done = [s for s in states.values() if s["state"] == "done"]
        if done:
            first_done.update(states)
        return bool(done)

    _wait(one_done, 180)
    # When the first job finished, the other had already rendered segments of its own.
    assert all(s["progress"]["segments_done"] >= 1 for s in first_done.values())
    _wait(lambda: all(client.get(job["status_url"]).json()["state"] == "done" for job in (a, b)), 180)


def test_cancel_frees_the_workers(api):
    client, jobs = api
    job = _submit(client, duration_s=60.0)
    _wait(lambda: client.get(job["status_url"]).json()["progress"]["step"] is not None, 60, 0.05)
    assert client.get("/healthz").json()["workers"]["busy"] >= 1
    assert client.delete(job["status_url"]).status_code == 200
    _wait(lambda: client.get("/healthz").json()["workers"]["busy"] == 0, 10)
    _wait(lambda: client.get(job["status_url"]).json()["state"] == "cancelled", 10)
    assert client.get(job["video_url"]).status_code == 409
    assert not [p for p in (jobs / job["id"]).iterdir() if p.name.startswith("output")]


def test_full_queue_answers_429(api):
    client, _ = api
    held = [_submit(client, duration_s=60.0) for _ in range(MAX_ACTIVE)]
    try:
        response = client.post("/v1/renders", json={"prompt": "one too many", "mode": "chain"})
        assert response.status_code == 429 and "Retry-After" in response.headers
    finally:
        for job in held:
            client.delete(job["status_url"])
    _wait(lambda: client.get("/healthz").json()["workers"]["active_jobs"] == 0, 30)


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("get", "/v1/renders/nope", None, 404),
    ("get", "/v1/renders/..%2F..%2Fetc/video", None, 404),
    ("delete", "/v1/renders/0123456789abcdef0123456789abcdef", None, 404),
    ("post", "/v1/renders", {"prompt": "a fox", "duration_s": -1}, 422),
    ("post", "/v1/renders", {"prompt": "a fox", "width": 100, "mode": "chain"}, 422),
    ("post", "/v1/renders", {"prompt": "a fox", "overlap_frames": 30, "mode": "chain"}, 422),
    ("post", "/v1/renders", {"prompt": "a fox", "image": "/etc/passwd"}, 422),
    ("post", "/v1/renders", {"prompt": "a fox", "width": 1024, "height": 1024, "mode": "chain"}, 422),
    ("post", "/v1/renders", {"prompt": "a fox", "image_base64": "not base64!"}, 422),
    ("post", "/v1/renders", {"prompt": "a fox", "image_base64": base64.b64encode(b"GIF89a....").decode()}, 422),
])
def test_bad_requests(api, method, path, body, status):
    client, _ = api
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    assert "ray::" not in response.text  # the reason, not a Ray traceback
    assert client.get("/healthz").status_code == 200


def test_video_is_409_until_done(api):
    client, _ = api
    job = _submit(client, duration_s=30.0)
    assert client.get(job["video_url"]).status_code == 409
    client.delete(job["status_url"])


def test_openapi_describes_every_request_field(api):
    client, _ = api
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["RenderBody"]["properties"]
    assert {"prompt", "duration_s", "mode", "storyboard"} <= set(body)
    undocumented = [name for name, prop in body.items() if not prop.get("description")]
    assert not undocumented
    assert {"/v1/renders", "/v1/renders/{job_id}", "/v1/renders/{job_id}/events", "/v1/renders/{job_id}/video",
            "/healthz"} <= set(schema["paths"])


def test_unknown_preset_lists_the_presets(api):
    client, _ = api
    response = client.post("/v1/renders", json={"prompt": "a fox", "preset": "sora"})
    detail = response.json()["detail"]
    assert response.status_code == 422 and "known presets:" in detail and "tiny" in detail


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_hostile_images(api):
    client, _ = api
    bomb = base64.b64encode(_png_header_only(50_000, 50_000)).decode()
    response = client.post("/v1/renders", json={"prompt": "a fox", "image_base64": bomb, "mode": "chain"})
    assert response.status_code == 422 and "pixels" in response.json()["detail"]
    huge = "A" * (17 * 2**20 * 4 // 3)
    assert client.post("/v1/renders", json={"prompt": "a fox", "image_base64": huge}).status_code == 413
    assert client.get("/healthz").status_code == 200


def test_uploaded_image_is_the_first_keyframe(api):
    from PIL import Image

    client, jobs = api
    picture = (np.indices((128, 128)).sum(axis=0) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([picture] * 3, axis=-1)).save(buffer, format="PNG")
    upload = base64.b64encode(buffer.getvalue()).decode()
    before = set(jobs.iterdir())
    bad = {"prompt": "a fox", "width": 100, "mode": "chain", "image_base64": upload}
    refused = client.post("/v1/renders", json=bad)
    assert refused.status_code == 422 and set(jobs.iterdir()) == before  # nothing written for a bad request
    job = _submit(client, duration_s=1.0, image_base64=upload)
    _wait(lambda: client.get(job["status_url"]).json()["state"] == "done", 120)
    folder = jobs / job["id"]
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["keyframes"][0]["source"] == "image"
    assert plan["keyframes"][0]["image"] == json.loads((folder / "request.json").read_text())["image"]
    assert Path(plan["keyframes"][0]["image"]).read_bytes() == buffer.getvalue()


def test_token_guards_every_route_but_healthz(api):
    client, _ = api
    bare = httpx.Client(base_url=client.base_url, timeout=30)
    assert bare.get("/healthz").status_code == 200
    for method, path in (("GET", "/v1/renders/abc"), ("POST", "/v1/renders"), ("GET", "/openapi.json"),
                         ("DELETE", "/v1/renders/abc"), ("GET", "/v1/renders/abc/video")):
        response = bare.request(method, path, json={"prompt": "x"} if method == "POST" else None)
        assert response.status_code == 401, (method, path)
    wrong = bare.get("/v1/renders/abc", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.get("/v1/renders/abc").status_code == 404  # with the token: on to the route


def test_schemathesis_finds_no_server_errors(api):
    client, _ = api
    st = str(Path(sys.executable).with_name("st"))
    done = subprocess.run(
        [st, "run", f"{str(client.base_url).rstrip('/')}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "15",
         "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "30", "--phases", "examples,fuzzing",
         "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    print(done.stdout[-3000:])
    try:
        assert done.returncode == 0, done.stdout[-4000:]
    finally:
        for folder in api[1].iterdir():
            if folder.is_dir() and json.loads((folder / "state.json").read_text())["state"] not in (
                    "done", "failed", "cancelled"):
                client.delete(f"/v1/renders/{folder.name}")
        _wait(lambda: client.get("/healthz").json()["workers"]["active_jobs"] == 0, 120)
    assert client.get("/healthz").status_code == 200


def test_ingress_and_runner_are_pinned_to_the_head_node(api):
    """Both touch the jobs root on the head's disk; they reserve no CPU, so only a resource pins them."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
    pinned = [a for a in alive if "RenderAPI" in a.class_name or a.name == "test-runner"]
    assert len(pinned) == 2, [(a.class_name, a.name) for a in alive]
    assert all("node:__internal_head__" in a.required_resources for a in pinned)

"""The Ray Serve app over real HTTP: submit, progress, SSE, download, cancel, 429, errors."""

import json
import socket
import time

import httpx
import pytest
import ray
from ray import serve

from pipeline.video_io import read_video

MAX_ACTIVE = 2


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
                         "model": {"cache_dir": str(tiny_cache)}, "parallel": {"workers": 2}}),
              name="minutereel", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
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
    a = _submit(client, duration_s=6.0, segment_frames=17, overlap_frames=4, seed=1)
    b = _submit(client, duration_s=6.0, segment_frames=17, overlap_frames=4, seed=2)
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

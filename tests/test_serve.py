"""The Ray Serve app over real HTTP, in the OpenAI Videos API shape: the official openai SDK as the client,
plus progress events, cancel and delete, 429, errors in the OpenAI shape, extension, remix, metrics, and the
studio page in headless Chromium."""

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
import openai
import pytest
import ray
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from pipeline.video_io import read_video

MAX_ACTIVE = 2
TOKEN = "test-token"
BALL = "a red ball moving right on a blue background"
SQUARE = "a big green square moving up on a white background"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver
NO_BROWSER = "MINUTEREEL_NO_BROWSER"  # set: skip the page test (scripts/setup.sh then installs no browser)


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


@pytest.fixture(scope="module")
def sdk(api):
    """The official openai client, unchanged, pointed at the app (no retries: a 4xx must surface at once)."""
    client = openai.OpenAI(base_url=f"{str(api[0].base_url).rstrip('/')}/v1", api_key=TOKEN, max_retries=0)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _no_job_left_running(request):
    """After each test, delete the videos it left unfinished, so a failed test cannot fill the next one's queue."""
    yield
    if "api" not in request.fixturenames:
        return
    client, jobs = request.getfixturevalue("api")
    for folder in jobs.iterdir():
        state = folder / "state.json"
        if state.exists() and json.loads(state.read_text())["state"] not in ("done", "failed", "cancelled"):
            client.delete(f"/v1/videos/{folder.name}")
    _wait(lambda: client.get("/healthz").json()["workers"]["active_jobs"] == 0, 60)


def _wait(predicate, timeout_s, interval_s=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def _create(client, **fields):
    response = client.post("/v1/videos", json={"prompt": "a fox", "mode": "chain", **fields})
    assert response.status_code == 200, response.text
    video = response.json()
    assert video["object"] == "video" and video["status"] in ("queued", "in_progress")
    return video


def _get(client, video):
    return client.get(f"/v1/videos/{video['id']}").json()


def _events(client, url):
    events = []
    with client.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return events


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _first_frame(prompt: str) -> np.ndarray:
    from pipeline import world

    return (world.render_frame(world.scene_from_prompt(prompt), 0, 1) * 255 + 0.5).astype(np.uint8)


def _poll(sdk, video_id, timeout_s=180):
    """Retrieve until the video ends; returns every Video seen."""
    seen = [sdk.videos.retrieve(video_id)]
    deadline = time.monotonic() + timeout_s
    while seen[-1].status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, f"video {video_id} still {seen[-1].status}"
        time.sleep(0.2)
        seen.append(sdk.videos.retrieve(video_id))
    return seen


def _error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_openai_sdk_renders_polls_lists_downloads_and_deletes(api, sdk, tmp_path):
    _, jobs = api
    first = _first_frame(BALL)
    video = sdk.videos.create(prompt=BALL, model="tiny", seconds="4", size="128x128",
                              input_reference=("ball.png", _png(first), "image/png"),
                              extra_body={"mode": "chain", "segment_frames": 33, "seed": 3})
    assert (video.object, video.model, video.seconds, video.size) == ("video", "tiny", "4", "128x128")
    assert video.status in ("queued", "in_progress") and video.completed_at is None and video.error is None
    seen = _poll(sdk, video.id)
    done = seen[-1]
    assert done.status == "completed" and done.progress == 100 and done.error is None, done
    progress = [v.progress for v in seen]
    assert progress == sorted(progress) and all(0 <= p <= 100 for p in progress)
    assert done.completed_at >= done.created_at

    other = sdk.videos.create(prompt="a big green square moving up on a white background", seconds="1",
                              extra_body={"mode": "chain"})
    listed = [v.id for v in sdk.videos.list(limit=1)]  # one a page: the SDK follows the cursor
    assert listed.index(other.id) < listed.index(video.id)  # newest first
    assert [v.id for v in sdk.videos.list(order="asc", limit=100)] == listed[::-1]

    mp4 = tmp_path / "ball.mp4"
    sdk.videos.download_content(video.id, variant="video").write_to_file(mp4)
    frames, info = read_video(mp4)
    assert (info.frames, info.fps, info.width, info.height) == (64, 16, 128, 128)
    thumbnail = tmp_path / "thumbnail.png"
    sdk.videos.download_content(video.id, variant="thumbnail").write_to_file(thumbnail)
    assert np.array_equal(np.asarray(Image.open(thumbnail)), first)  # the uploaded image is the first keyframe
    sdk.videos.download_content(video.id, variant="spritesheet").write_to_file(tmp_path / "spritesheet.png")
    sheet = np.asarray(Image.open(tmp_path / "spritesheet.png"))
    assert sheet.shape[0] == 128 and sheet.shape[1] % 128 == 0 and sheet.shape[1] >= 256  # a still per segment
    assert np.array_equal(sheet[:, :128], first) and not np.array_equal(sheet[:, 128:256], first)

    deleted = sdk.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    assert not (jobs / video.id).exists()
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)
    assert video.id not in [v.id for v in sdk.videos.list(limit=100)]
    _poll(sdk, other.id)


def test_openai_sdk_errors(sdk):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.videos.create(prompt=BALL, size="100x100")
    assert err.value.param == "size" and "multiples of 32" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        sdk.videos.create(prompt=BALL, model="sora-2")
    assert err.value.param == "model" and "tiny" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        sdk.videos.create(prompt=BALL, seconds="-4")
    assert err.value.param == "seconds"
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve("0123456789abcdef0123456789abcdef")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(sdk.base_url), api_key="wrong", max_retries=0).videos.list()


def _assert_continues(before, after):
    """`after` is `before` (decoded and encoded once more) up to its last frame, where the added second starts:
    that frame is the extension's first keyframe."""
    before, after = before.astype(int), after.astype(int)
    assert np.abs(after[:len(before) - 1] - before[:-1]).mean() < 3
    assert np.abs(after[len(before) - 1] - before[-1]).mean() < 8


def test_extension_continues_from_the_last_frame(api, sdk, tmp_path):
    client, _ = api
    source = sdk.videos.create(prompt=BALL, seconds="2", input_reference=("ball.png", _png(_first_frame(BALL)),
                                                                          "image/png"), extra_body={"mode": "chain"})
    by_id = {"prompt": BALL, "seconds": "1", "video": {"id": source.id}}
    _error(client.post("/v1/videos/extensions", json=by_id), 409, "video")  # not completed yet
    assert _poll(sdk, source.id)[-1].status == "completed"
    sdk.videos.download_content(source.id).write_to_file(tmp_path / "source.mp4")
    before, _ = read_video(tmp_path / "source.mp4")
    # The SDK sends `video` as a file (its extract_files refuses {"id": ...}); an id goes as JSON or `video[id]`.
    response = client.post("/v1/videos/extensions", json=by_id)
    assert response.status_code == 200, response.text
    extended = response.json()
    assert extended["seconds"] == "3" and extended["extended_from_video_id"] == source.id
    uploaded = sdk.videos.extend(prompt=BALL, seconds="1", video=("source.mp4", (tmp_path / "source.mp4").read_bytes(),
                                                                   "video/mp4"))
    assert uploaded.seconds == "3" and uploaded.model_extra["extended_from_video_id"] is None
    for video_id in (extended["id"], uploaded.id):
        assert _poll(sdk, video_id)[-1].status == "completed"
        sdk.videos.download_content(video_id).write_to_file(tmp_path / f"{video_id}.mp4")
        after, info = read_video(tmp_path / f"{video_id}.mp4")
        assert (len(before), info.frames) == (32, 48)
        _assert_continues(before, after)
    with pytest.raises(openai.BadRequestError):  # an extension's request holds only the added seconds
        sdk.videos.remix(uploaded.id, prompt="a fox")
    with pytest.raises(openai.BadRequestError) as err:
        sdk.videos.extend(prompt=BALL, seconds="1", video=("x.mp4", b"not a video", "video/mp4"))
    assert err.value.param == "video"
    _error(client.post("/v1/videos/extensions", data={"prompt": BALL, "seconds": "1", "video[id]": "nope"}), 404,
           "video")


def test_remix_keeps_everything_but_the_prompt(api, sdk):
    client, jobs = api
    source = sdk.videos.create(prompt="a fox", seconds="1", size="128x128", extra_body={"seed": 7, "mode": "chain"})
    remix = sdk.videos.remix(source.id, prompt=BALL)
    assert remix.remixed_from_video_id == source.id and remix.prompt == BALL
    kept = {k: v for k, v in json.loads((jobs / source.id / "request.json").read_text()).items() if k != "prompt"}
    made = {k: v for k, v in json.loads((jobs / remix.id / "request.json").read_text()).items() if k != "prompt"}
    assert made == kept
    for video in (source, remix):
        assert _poll(sdk, video.id)[-1].status == "completed"


def _samples(client) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_follow_a_render(api):
    client, _ = api
    before = _samples(client)
    assert sum(before[("minutereel_workers", (("state", state),))] for state in ("idle", "busy")) == 2
    video = _create(client, prompt=BALL, seconds=3, segment_frames=33)
    _wait(lambda: _get(client, video)["status"] == "completed", 120)
    after = _samples(client)
    grew = {name for (name, labels), value in after.items()
            if name.startswith("minutereel_") and value > before.get((name, labels), 0)}
    assert {"minutereel_keyframes_rendered_total", "minutereel_segments_rendered_total",
            "minutereel_segment_render_seconds_count", "minutereel_frames_encoded_total"} <= grew, grew
    def added(name):
        return after[(name, ())] - before.get((name, ()), 0)

    segments = json.loads((api[1] / video["id"] / "plan.json").read_text())["segments"]
    assert added("minutereel_segments_rendered_total") == added("minutereel_segment_render_seconds_count")
    assert added("minutereel_segments_rendered_total") == len(segments) >= 2
    assert added("minutereel_keyframes_rendered_total") == 1 and added("minutereel_frames_encoded_total") == 48
    done = ("minutereel_jobs", (("state", "done"),))
    assert after[done] == before.get(done, 0) + 1
    assert after[("minutereel_queue_depth", ())] == 0


def test_events_stream_video_objects_until_done(api):
    client, _ = api
    video = _create(client, seconds=3.0, segment_frames=33)
    events = _events(client, f"/v1/videos/{video['id']}/events")
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100
    assert events[-1]["render"]["history"] == ["queued", "planning", "rendering", "stitching", "done"]
    frames_seen = [e["render"]["progress"]["frames_written"] for e in events]
    assert frames_seen == sorted(frames_seen) and frames_seen[-1] == 48
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


def _playlist(text):
    """An HLS playlist's pieces as (uri, seconds), and whether it ended."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:EVENT" in lines
    pieces = [(lines[i + 1], float(line.split(":")[1].rstrip(","))) for i, line in enumerate(lines)
              if line.startswith("#EXTINF:")]
    return pieces, lines[-1] == "#EXT-X-ENDLIST"


def test_preview_playlist_grows_while_rendering_and_ends_at_the_videos_length(api, tmp_path):
    client, _ = api
    video = _create(client, prompt=BALL, seconds=30)
    _error(client.get(f"/v1/videos/{video['id']}/preview.m3u8"), 409)  # no piece yet: poll
    seen = []  # (pieces listed, ended, status) while it renders
    while True:
        status = _get(client, video)["status"]
        response = client.get(f"/v1/videos/{video['id']}/preview.m3u8")
        if response.status_code == 200:
            assert response.headers["content-type"] == "application/vnd.apple.mpegurl"
            pieces, ended = _playlist(response.text)
            seen.append((len(pieces), ended, status))
        if status not in ("queued", "in_progress"):
            break
        time.sleep(0.1)
    assert status == "completed"
    assert any(n >= 1 and not ended and status == "in_progress" for n, ended, status in seen), seen
    assert [n for n, _, _ in seen] == sorted(n for n, _, _ in seen)  # it only grows
    pieces, ended = _playlist(client.get(f"/v1/videos/{video['id']}/preview.m3u8").text)
    assert ended and abs(sum(seconds for _, seconds in pieces) - 30.0) < 1.0
    # Every piece is served and decodes; together they are the video's frames.
    frames = 0
    for uri, seconds in pieces:
        response = client.get(f"/v1/videos/{video['id']}/{uri}")
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp2t"
        (tmp_path / "piece.ts").write_bytes(response.content)
        count = read_video(tmp_path / "piece.ts")[1].frames
        assert abs(count / 16 - seconds) < 1e-6
        frames += count
    assert frames == 480 == read_video(_download(client, video, tmp_path))[1].frames
    _error(client.get(f"/v1/videos/{video['id']}/pieces/..%2Fstate.json"), 404)
    _error(client.get(f"/v1/videos/{video['id']}/pieces/00000.json"), 404)


def _download(client, video, tmp_path):
    response = client.get(f"/v1/videos/{video['id']}/content")
    assert response.status_code == 200
    path = tmp_path / f"{video['id']}.mp4"
    path.write_bytes(response.content)
    return path


def test_two_jobs_share_the_pool(api):
    client, _ = api
    a = _create(client, seconds=6.0, segment_frames=21, overlap_frames=4, seed=1)
    b = _create(client, seconds=6.0, segment_frames=21, overlap_frames=4, seed=2)
    first_done = {}

    def one_done():
        states = {job["id"]: _get(client, job) for job in (a, b)}
        done = [s for s in states.values() if s["status"] == "completed"]
        if done:
            first_done.update(states)
        return bool(done)

    _wait(one_done, 180)
    # When the first job finished, the other had already rendered segments of its own.
    assert all(s["render"]["progress"]["segments_done"] >= 1 for s in first_done.values())
    _wait(lambda: all(_get(client, job)["status"] == "completed" for job in (a, b)), 180)


def test_cancel_and_delete_free_the_workers(api):
    client, jobs = api
    cancelled = _create(client, seconds=60.0)
    _wait(lambda: _get(client, cancelled)["render"]["progress"]["step"] is not None, 60, 0.05)
    assert client.get("/healthz").json()["workers"]["busy"] >= 1
    assert client.post(f"/v1/videos/{cancelled['id']}/cancel").status_code == 200
    _wait(lambda: client.get("/healthz").json()["workers"]["busy"] == 0, 10)
    _wait(lambda: _get(client, cancelled)["status"] == "failed", 10)
    assert _get(client, cancelled)["error"]["code"] == "cancelled"
    _error(client.get(f"/v1/videos/{cancelled['id']}/content"), 409)
    assert not [p for p in (jobs / cancelled["id"]).iterdir() if p.name.startswith("output")]

    deleted = _create(client, seconds=60.0)
    _wait(lambda: _get(client, deleted)["render"]["progress"]["step"] is not None, 60, 0.05)
    response = client.delete(f"/v1/videos/{deleted['id']}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    _wait(lambda: client.get("/healthz").json()["workers"] == {"groups": 2, "busy": 0, "active_jobs": 0}, 10)
    assert not (jobs / deleted["id"]).exists()
    _error(client.get(f"/v1/videos/{deleted['id']}"), 404)
    assert client.delete(f"/v1/videos/{cancelled['id']}").status_code == 200


def test_full_queue_answers_429(api, sdk):
    client, _ = api
    held = [_create(client, seconds=60.0) for _ in range(MAX_ACTIVE)]
    try:
        response = client.post("/v1/videos", json={"prompt": "one too many", "mode": "chain"})
        assert _error(response, 429)["type"] == "rate_limit_error" and "Retry-After" in response.headers
        with pytest.raises(openai.RateLimitError):
            sdk.videos.create(prompt="one too many")
    finally:
        for video in held:
            client.delete(f"/v1/videos/{video['id']}")
    _wait(lambda: client.get("/healthz").json()["workers"]["active_jobs"] == 0, 30)


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), [
    ("get", "/v1/videos/nope", None, 404, None),
    ("get", "/v1/videos/..%2F..%2Fetc/content", None, 404, None),
    ("delete", "/v1/videos/0123456789abcdef0123456789abcdef", None, 404, None),
    ("get", "/v1/videos/nope/content?variant=poster", None, 400, "variant"),
    ("get", "/v1/videos?limit=0", None, 400, "limit"),
    ("get", "/v1/videos?after=nope", None, 400, "after"),
    ("post", "/v1/videos", {"prompt": "a fox", "seconds": -1}, 400, "seconds"),
    ("post", "/v1/videos", {"prompt": "a fox", "seconds": "four"}, 400, "seconds"),
    ("post", "/v1/videos", {"prompt": "a fox", "size": "128"}, 400, "size"),
    ("post", "/v1/videos", {"prompt": "a fox", "size": "1024x1024"}, 400, "size"),
    ("post", "/v1/videos", {"prompt": "a fox", "width": 128}, 400, "width"),
    ("post", "/v1/videos", {"prompt": "a fox", "image": "/etc/passwd"}, 400, "image"),
    ("post", "/v1/videos", {"prompt": "a fox", "storyboard": [{"at_s": 0, "prompt": "x", "image": "/etc/passwd"}]},
     400, "storyboard"),
    ("post", "/v1/videos", {"prompt": "a fox", "input_reference": {"image_url": "https://example.com/a.png"}},
     400, "input_reference"),
    ("post", "/v1/videos", {"prompt": "a fox", "input_reference": {"image_url": "data:image/png;base64,!!"}},
     400, "input_reference"),
    ("post", "/v1/videos", [1, 2], 400, None),
    ("post", "/v1/videos", {"prompt": "a fox", "overlap_frames": 30, "mode": "chain"}, 422, None),
    ("post", "/v1/videos", {"prompt": "a fox", "loras": ["/not/loaded.safetensors:0.5"]}, 422, None),
    ("post", "/v1/videos", {"prompt": "a fox", "loras": "[not json"}, 400, "loras"),
    ("post", "/v1/videos/extensions", {"prompt": "more", "seconds": 4}, 400, "video"),
    ("post", "/v1/videos/extensions", {"prompt": "more", "seconds": 4, "video": {"id": "nope"}}, 404, "video"),
    ("post", "/v1/videos/nope/remix", {"prompt": "again"}, 404, None),
])
def test_bad_requests(api, method, path, body, status, param):
    client, _ = api
    response = client.request(method.upper(), path, json=body)
    _error(response, status, param)
    assert "ray::" not in response.text  # the reason, not a Ray traceback
    assert client.get("/healthz").status_code == 200


def test_unsupported_body(api):
    client, _ = api
    _error(client.post("/v1/videos", content=b"prompt", headers={"content-type": "text/plain"}), 400)
    _error(client.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_video_is_409_until_done(api):
    client, _ = api
    video = _create(client, seconds=30.0)
    assert _error(client.get(f"/v1/videos/{video['id']}/content"), 409)["code"] == "video_not_ready"
    client.delete(f"/v1/videos/{video['id']}")


def test_openapi_describes_every_request_field(api):
    client, _ = api
    schema = client.get("/openapi.json").json()
    for name in ("VideoCreateJSON", "VideoCreateForm", "ExtendFields", "ExtendForm", "RemixFields"):
        body = schema["components"]["schemas"][name]["properties"]
        undocumented = [field for field, prop in body.items() if not prop.get("description")]
        assert not undocumented, (name, undocumented)
    assert {"prompt", "model", "seconds", "size", "input_reference", "storyboard", "mode", "seed"} <= set(
        schema["components"]["schemas"]["VideoCreateForm"]["properties"])
    create = schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(create)
    assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/v1/videos/extensions",
            "/v1/videos/{video_id}/remix", "/v1/videos/{video_id}/events", "/v1/videos/{video_id}/plan", "/v1/models",
            "/metrics", "/healthz"} <= set(schema["paths"])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_hostile_images(api):
    client, _ = api
    bomb = _png_header_only(50_000, 50_000)
    response = client.post("/v1/videos", data={"prompt": "a fox"}, files={"input_reference": ("b.png", bomb)})
    assert "pixels" in _error(response, 400, "input_reference")["message"]
    gif = client.post("/v1/videos", data={"prompt": "a fox"}, files={"input_reference": ("a.gif", b"GIF89a....")})
    _error(gif, 400, "input_reference")
    huge = b"\0" * (17 * 2**20)
    _error(client.post("/v1/videos", data={"prompt": "a fox"}, files={"input_reference": ("h.png", huge)}), 413)
    url = "data:image/png;base64," + "A" * (17 * 2**20 * 4 // 3)
    _error(client.post("/v1/videos", json={"prompt": "a fox", "input_reference": {"image_url": url}}), 413)
    assert client.get("/healthz").status_code == 200


def test_uploaded_image_is_the_first_keyframe(api):
    client, jobs = api
    picture = (np.indices((128, 128)).sum(axis=0) % 256).astype(np.uint8)
    upload = _png(np.stack([picture] * 3, axis=-1))
    before = set(jobs.iterdir())
    refused = client.post("/v1/videos", data={"prompt": "a fox", "overlap_frames": "30", "mode": "chain"},
                          files={"input_reference": ("p.png", upload, "image/png")})
    _error(refused, 422)
    assert set(jobs.iterdir()) == before  # nothing written for a bad request
    data_url = "data:image/png;base64," + base64.b64encode(upload).decode()
    video = _create(client, seconds=1.0, input_reference={"image_url": data_url})
    _wait(lambda: _get(client, video)["status"] == "completed", 120)
    folder = jobs / video["id"]
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["keyframes"][0]["source"] == "image"
    assert plan["keyframes"][0]["image"] == json.loads((folder / "request.json").read_text())["image"]
    assert Path(plan["keyframes"][0]["image"]).read_bytes() == upload


def test_token_guards_every_route_but_healthz_and_the_page(api):
    client, _ = api
    bare = httpx.Client(base_url=client.base_url, timeout=30)
    assert bare.get("/healthz").status_code == 200
    for path, kind in (("/", "text/html"), ("/studio/studio.js", "text/javascript"),
                       ("/studio/studio.css", "text/css")):
        response = bare.get(path)  # a browser cannot send the token when it navigates; the page holds no data
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
    assert bare.get("/studio/serve.py").status_code == 401  # only the page's own files are open
    assert client.get("/studio/serve.py").status_code == 404
    for method, path in (("GET", "/v1/videos/abc"), ("POST", "/v1/videos"), ("GET", "/openapi.json"),
                         ("GET", "/v1/videos"), ("DELETE", "/v1/videos/abc"), ("GET", "/v1/videos/abc/content"),
                         ("POST", "/v1/videos/extensions"), ("GET", "/metrics"), ("GET", "/v1/videos/abc/plan"),
                         ("GET", "/v1/models"), ("GET", "/v1/videos/abc/events")):
        response = bare.request(method, path, json={"prompt": "x"} if method == "POST" else None)
        assert _error(response, 401)["code"] == "invalid_api_key", (method, path)
    wrong = bare.get("/v1/videos/abc", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.get("/v1/videos/abc").status_code == 404  # with the token: on to the route


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
                client.delete(f"/v1/videos/{folder.name}")
        _wait(lambda: client.get("/healthz").json()["workers"]["active_jobs"] == 0, 120)
    assert client.get("/healthz").status_code == 200


def test_ingress_and_runner_are_pinned_to_the_head_node(api):
    """Both touch the jobs root on the head's disk; they reserve no CPU, so only a resource pins them."""
    from ray.util.state import list_actors

    # The address: another Ray cluster on this machine (a concurrent test session) would make it ambiguous.
    alive = list_actors(address=os.environ["RAY_JOB_ADDRESS"], filters=[("state", "=", "ALIVE")], limit=1000,
                        detail=True)
    pinned = [a for a in alive if "RenderAPI" in a.class_name or a.name == "test-runner"]
    assert len(pinned) == 2, [(a.class_name, a.name) for a in alive]
    assert all("node:__internal_head__" in a.required_resources for a in pinned)


@pytest.fixture
def browser(monkeypatch):
    """Debian's headless Chromium through its own chromedriver, both given by path: Selenium Manager, which
    would download a browser, never runs. Missing is a failure (scripts/setup.sh installs them) unless
    MINUTEREEL_NO_BROWSER is set."""
    if os.environ.get(NO_BROWSER):
        pytest.skip(f"{NO_BROWSER} is set")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    assert not missing, (f"{missing} missing: run scripts/setup.sh (apt-get install chromium chromium-driver), or "
                         f"set {NO_BROWSER}=1 to skip this test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--autoplay-policy=no-user-gesture-required", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


TIMELINE_JS = """return {status: document.getElementById('status').textContent,
    progress: document.getElementById('progress').value,
    segments: [...document.querySelectorAll('#timeline .segment')].map(e => e.dataset.state),
    keyframes: [...document.querySelectorAll('#timeline .keyframe')].map(e => e.dataset.state)};"""


def _watch_page(driver, timeout_s=180) -> list[dict]:
    """What the page's status, progress and timeline show, sampled until the video ends."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while not seen or seen[-1]["status"] not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, seen[-1:]
        seen.append(driver.execute_script(TIMELINE_JS))
        time.sleep(0.05)
    return seen


def test_studio_page_renders_a_storyboard_and_plays_it(api, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    client, jobs = api

    def until(condition, timeout_s=60):  # the page redraws its lists: an element found may be replaced at once
        return WebDriverWait(browser, timeout_s, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda driver: condition())

    def field(element_id):
        return browser.find_element(By.ID, element_id)

    browser.get(str(client.base_url))
    until(lambda: "bearer token" in field("jobs-error").text)  # the page's API calls answer 401 without it
    field("token").send_keys(TOKEN, Keys.TAB)
    until(lambda: field("jobs-error").text == "" and field("model").get_attribute("value") == "tiny")

    first = tmp_path / "ball.png"
    first.write_bytes(_png(_first_frame(BALL)))
    field("prompt").send_keys(BALL)
    field("add-shot").click()
    shot = browser.find_element(By.CSS_SELECTOR, "#shots .shot")
    shot.find_element(By.CLASS_NAME, "at").send_keys(Keys.BACKSPACE, "1.5")
    shot.find_element(By.CLASS_NAME, "shot-prompt").send_keys(SQUARE)
    field("image").send_keys(str(first))
    field("mode").send_keys("chain")
    for element_id, value in (("seconds", "3"), ("segment-frames", "21"), ("overlap-frames", "4")):
        field(element_id).clear()
        field(element_id).send_keys(value)
    field("submit").click()

    seen = _watch_page(browser)
    video_id = field("job-id").text
    assert seen[-1]["status"] == "completed", (seen[-1], field("job-error").text)
    request = json.loads((jobs / video_id / "request.json").read_text())
    assert [request[name] for name in ("prompt", "mode", "duration_s", "segment_frames", "overlap_frames")] == [
        BALL, "chain", 3.0, 21, 4]
    assert request["storyboard"] == [{"at_s": 1.5, "prompt": SQUARE, "image": None}]
    plan = json.loads((jobs / video_id / "plan.json").read_text())
    assert plan["keyframes"][0]["source"] == "image"  # the uploaded first frame
    progress = [sample["progress"] for sample in seen]
    assert progress == sorted(progress) and 0 < max(progress[:-1], default=0) < 100 and progress[-1] == 100
    shown = [sample for sample in seen if sample["segments"]]
    assert {len(sample["segments"]) for sample in shown} == {len(plan["segments"])} and len(plan["segments"]) >= 3
    assert {len(sample["keyframes"]) for sample in shown} == {len(plan["keyframes"])}
    states = {state for sample in shown for state in sample["segments"]}
    assert {"running", "waiting"} <= states, states  # the timeline followed the render
    until(lambda: browser.execute_script(TIMELINE_JS)["segments"] == ["done"] * len(plan["segments"]))

    media = """const v = document.getElementById('video'), s = document.getElementById('strip');
        return {ready: v.readyState, duration: v.duration, time: v.currentTime, error: v.error && v.error.code,
                width: v.videoWidth, strip: s.complete ? s.naturalWidth : 0};"""
    until(lambda: browser.execute_script(media)["time"] > 0.2, 30)  # decoded and playing
    shown = browser.execute_script(media)
    assert shown["ready"] >= 2 and shown["error"] is None and shown["width"] == 128, shown
    assert abs(shown["duration"] - 3.0) < 0.1, shown
    assert shown["strip"] >= 3 * 128, shown  # a still per segment start
    # The live preview played the pieces through hls.js; its playlist ended, so it holds the whole video.
    preview = """const v = document.getElementById('preview-video');
        return {pieces: studio.previewPieces, ready: v.readyState, duration: v.duration, error: v.error && v.error.code,
                width: v.videoWidth};"""
    until(lambda: browser.execute_script(preview)["pieces"] >= 1, 30)
    until(lambda: abs(browser.execute_script(preview)["duration"] - 3.0) < 0.1, 30)
    shown = browser.execute_script(preview)
    assert shown["ready"] >= 1 and shown["error"] is None and shown["width"] == 128, shown
    chrome = browser.execute_script("return window.outerHeight - window.innerHeight")
    browser.set_window_size(1280, browser.execute_script("return document.documentElement.scrollHeight") + chrome)
    screenshot = tmp_path / "studio.png"
    assert browser.save_screenshot(str(screenshot)) and Image.open(screenshot).size[0] >= 1200
    print(f"studio screenshot: {screenshot}")

    field("seconds").clear()
    field("seconds").send_keys("60")
    field("submit").click()
    until(lambda: field("job-id").text not in ("", video_id))
    long_id = field("job-id").text
    cancel = f'tr[data-id="{long_id}"] button.cancel'
    until(lambda: browser.find_elements(By.CSS_SELECTOR, cancel))  # the jobs list refreshes after the submit
    browser.find_element(By.CSS_SELECTOR, cancel).click()
    until(lambda: browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{long_id}"] td.status').text == "cancelled")
    until(lambda: field("status").text == "cancelled", 10)  # the watched video's events end there too
    assert _get(client, {"id": long_id})["error"]["code"] == "cancelled"

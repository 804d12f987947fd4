"""Multi-node, simulated on this machine: a head and a second node with its own CPU slot each hold a shard group;
the second node is removed mid-render, while it encodes the piece of a segment it rendered (so those frames are
lost after they were rendered); that segment is rendered again, the render completes with the same video, and
the job files are written by the driver on the head (tests/multinode.py runs in its own process: this one is
attached to the session's cluster)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEGMENTS = range(4)
JOB_FILES = sorted(["keyframes/00000.npy", "keyframes/00001.npy", "output.mp4", "plan.json", "request.json",
                    "preview.m3u8", "state.json", *(f"edges/{i:05d}.npz" for i in SEGMENTS),
                    *(f"pieces/{i:05d}{kind}" for i in SEGMENTS for kind in (".json", ".ts")),
                    *(f"pieces/{i:05d}-lead.ts" for i in SEGMENTS[1:])])


def test_render_survives_losing_a_node_with_the_same_video(tiny_cache, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode.py"), str(tiny_cache), str(tmp_path)],
                          cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2  # one group on each node
    assert report["removed_with_segments_left"][0] >= 1  # removed mid-render
    # The segment whose piece the lost node was encoding was rendered again, on the head: more renders than the
    # plan has (a render the node had in flight is retried and counts once, when it completes; a second body
    # that reached the node's held encoder before the node went is lost and rendered again too).
    assert report["segments_rendered"] >= len(SEGMENTS) + 1
    assert report["same_video"] and report["state"] == "done"
    assert report["groups_left"] == 1  # the lost node's group was given up, the other finished the video
    assert report["driver_on_head"] and report["job_files"] == JOB_FILES, report["job_files"]

"""Planner properties over durations, fps, overlaps and modes (hypothesis), and its errors."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.planner import default_mode, derive_seed, plan_render
from orchestrator.request import RenderRequest, load_storyboard
from pipeline.presets import load_preset

TINY = load_preset("tiny")
# Wan's frame rule (4k + 1 frames) and 16-pixel multiple, which every real preset has; the tiny preset's own
# rule (12k + 9, its temporal patch of 3) gets a property run of its own below.
WAN_RULE = TINY.model_copy(update={"frame_modulus": 4, "frame_remainder": 1, "spatial_multiple": 16})


def _plan(preset=WAN_RULE, **fields):
    return plan_render(RenderRequest(**{"prompt": "a fox", **fields}), preset)


@settings(max_examples=150, deadline=None)
@given(
    duration=st.floats(0.2, 120.0), fps=st.integers(8, 30), overlap=st.integers(1, 16),
    mode=st.sampled_from(["chain", "keyframes", "bridge"]),
    rule=st.sampled_from([(WAN_RULE, 33), (WAN_RULE, 49), (WAN_RULE, 81), (TINY, 33), (TINY, 45), (TINY, 81)]),
)
def test_plan_covers_every_frame_with_valid_segments(duration, fps, overlap, mode, rule):
    preset, max_len = rule
    fields = dict(duration_s=duration, fps=fps, overlap_frames=overlap, mode=mode, segment_frames=max_len)
    if mode != "keyframes" and overlap * 4 >= max_len:
        with pytest.raises(ValueError, match="under a quarter of segment_frames"):
            _plan(preset, **fields)
        return
    plan = _plan(preset, **fields)
    segments = plan.segments
    assert plan.total_frames == round(duration * fps)
    assert segments[0].start_frame == 0 and segments[0].overlap_prev == 0 and segments[-1].overlap_next == 0
    assert 0 <= segments[-1].end_frame - plan.total_frames < preset.frame_modulus
    for s in segments:
        assert preset.is_valid_length(s.num_frames) and s.num_frames <= max_len
    for left, right in zip(segments, segments[1:], strict=False):
        shared = left.end_frame - right.start_frame
        assert shared == left.overlap_next == right.overlap_prev
        # keyframes: the shared keyframe; bridge: overlap into a bridge, its right keyframe out of it
        expected = {"keyframes": 1, "chain": overlap, "bridge": overlap if left.index % 2 == 0 else 1}[mode]
        assert shared == expected
        assert right.start_frame > left.start_frame + left.overlap_prev  # every segment adds frames
    waves = {s.wave for s in segments}
    if mode == "keyframes":
        assert waves == {0}
    if mode == "bridge":
        assert waves <= {0, 1}
    if mode == "chain":
        assert [s.wave for s in segments] == list(range(len(segments)))


@settings(max_examples=60, deadline=None)
@given(duration=st.floats(0.4, 90.0), mode=st.sampled_from(["chain", "keyframes", "bridge"]))
def test_conditioning_frames_point_at_the_same_output_frame(duration, mode):
    plan = _plan(duration_s=duration, mode=mode)
    keyframe_at = {k.index: k.frame for k in plan.keyframes}
    for s in plan.segments:
        for ref, local in ((s.first, 0), (s.last, s.num_frames - 1)):
            if ref is None:
                continue
            target = keyframe_at[ref.index] if ref.source == "keyframe" else \
                plan.segments[ref.index].start_frame + ref.frame
            assert target == s.start_frame + local
            if ref.source == "segment":
                assert plan.segments[ref.index].wave < s.wave
    if mode == "chain":
        return
    # Every keyframe is a frame of the output: each segment holding its frame is conditioned on it there.
    for k in plan.keyframes:
        holders = [s for s in plan.segments if s.start_frame <= k.frame < s.end_frame]
        assert holders
        for s in holders:
            ref = s.first if k.frame == s.start_frame else s.last if k.frame == s.end_frame - 1 else None
            assert ref is not None and (ref.source, ref.index) == ("keyframe", k.index)


def test_sixty_seconds_default_plan():
    plan = _plan(mode="bridge")
    assert (plan.total_frames, plan.fps, plan.width, plan.height) == (960, 16, 128, 128)
    assert plan.waves == 2
    assert len(plan.keyframes) == len([s for s in plan.segments if s.wave == 0])


def test_seeds_derive_from_request_seed_kind_and_index():
    a, b = _plan(mode="bridge", seed=1), _plan(mode="bridge", seed=2)
    assert a == _plan(mode="bridge", seed=1)
    assert [s.seed for s in a.segments] != [s.seed for s in b.segments]
    assert a.segments[3].seed == derive_seed(1, "segment", 3)
    assert len({s.seed for s in a.segments} | {k.seed for k in a.keyframes}) == len(a.segments) + len(a.keyframes)


def test_default_mode_follows_workers():
    assert default_mode(WAN_RULE, 1) == "chain"
    assert default_mode(WAN_RULE, 2) == "bridge"


@pytest.mark.parametrize(("fields", "message"), [
    ({"mode": "chain", "width": 100}, "width 100 is not a multiple of 16"),
    ({"mode": "chain", "width": 512, "height": 512}, "512x512 is over the 65536 pixels"),
    ({"mode": "chain", "segment_frames": 50}, "segment_frames 50"),
    ({"mode": "chain", "segment_frames": 85}, "at most 81"),
    ({"mode": "chain", "overlap_frames": 21}, "overlap_frames 21"),
    ({"mode": "chain", "duration_s": 0.01}, "less than one frame"),
    ({}, "mode is not set"),
    ({"mode": "keyframes", "duration_s": 3600, "fps": 120, "segment_frames": 5}, "need 108000 segments; the limit"),
])
def test_bad_requests_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        _plan(**fields)


@pytest.mark.parametrize("fields", [{"prompt": "  "}, {"duration_s": -1}, {"fps": 0}, {"mode": "zigzag"}])
def test_request_validation(fields):
    with pytest.raises(ValidationError):
        RenderRequest(**{"prompt": "a fox", **fields})


def _story(tmp_path, text):
    (tmp_path / "red.png").write_bytes(b"")  # images are only read when rendering
    path = tmp_path / "story.yaml"
    path.write_text(text)
    return load_storyboard(path)


STORY = """
- {at_s: 0, prompt: "a calm sea"}
- {at_s: 4, prompt: "a storm gathers", image: red.png}
- {at_s: 8, prompt: "lightning over the waves"}
"""


def test_storyboard_assigns_prompts_and_images(tmp_path):
    story = _story(tmp_path, STORY)
    plan = _plan(prompt=None, storyboard=story, duration_s=12, mode="keyframes", segment_frames=33)
    prompts = [s.prompt for s in plan.segments]
    assert prompts == ["a calm sea"] * 2 + ["a storm gathers"] * 2 + ["lightning over the waves"] * 2
    with_image = [k for k in plan.keyframes if k.source == "image"]
    assert [(k.frame, k.image) for k in with_image] == [(64, str(tmp_path / "red.png"))]
    assert with_image[0].prompt == "a storm gathers"


def test_storyboard_image_far_from_any_keyframe_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"storyboard\[1\] at 4.0 s has no keyframe near it in chain mode"):
        _plan(prompt=None, storyboard=_story(tmp_path, STORY), duration_s=12, mode="chain")


def test_storyboard_image_near_the_end_goes_to_a_keyframe_inside_the_video():
    # 35 frames; the last segment is trimmed, so its closing keyframe (frame 36) is past the end.
    def story(at_s):
        return [{"at_s": 0, "prompt": "sea"}, {"at_s": at_s, "prompt": "storm", "image": "late.png"}]

    plan = _plan(prompt=None, storyboard=story(2.0), duration_s=2.2, mode="keyframes", segment_frames=17)
    assert plan.keyframes[-1].frame >= plan.total_frames
    (shown,) = [k for k in plan.keyframes if k.source == "image"]
    assert shown.frame == 24 < plan.total_frames
    with pytest.raises(ValueError, match=r"keyframes at 0.00, 0.75, 1.50 s\); .* or use a smaller --segment-frames$"):
        _plan(prompt=None, storyboard=story(2.15), duration_s=2.2, mode="keyframes", segment_frames=17)


def test_two_images_on_one_keyframe_is_an_error(tmp_path):
    story = _story(tmp_path, STORY)
    with pytest.raises(ValueError, match=r"image and storyboard\[0\] both fall on keyframe 0"):
        _plan(prompt=None, image="first.png", storyboard=[story[0].model_copy(update={"image": "x.png"})],
              duration_s=12, mode="keyframes")


@pytest.mark.parametrize(("story", "message"), [
    ("- {at_s: 20, prompt: late}", r"at or past the end"),
    ("- {at_s: 5, prompt: b}\n- {at_s: 1, prompt: a}", "sorted by at_s"),
    ("a: 1", "must be a list"),
])
def test_bad_storyboards(tmp_path, story, message):
    with pytest.raises(ValueError, match=message):
        _plan(prompt=None, storyboard=_story(tmp_path, story), duration_s=12, mode="keyframes")


def test_mode_the_preset_cannot_do_names_the_preset_and_its_modes():
    chain_only = WAN_RULE.model_copy(update={"name": "i2v-only", "supports_last_frame": False})
    with pytest.raises(ValueError, match=r"preset 'i2v-only' supports: chain"):
        plan_render(RenderRequest(prompt="a fox", mode="bridge"), chain_only)


def test_plan_json_does_not_depend_on_workers():
    def plan_json(workers):
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "plan", "--prompt", "a fox", "--mode", "bridge",
             "--workers", str(workers), "--json"], capture_output=True, text=True, check=True,
        ).stdout
        return json.loads(out)

    assert plan_json(1) == plan_json(2) == plan_json(7)


def test_keyframe_sampling_is_resolved_once_in_the_plan():
    tiny, distilled = load_preset("tiny"), load_preset("wan2.2-i2v-a14b-4step")
    plan = plan_render(RenderRequest(prompt="a fox", duration_s=2, mode="chain", steps=6), tiny)
    assert (plan.steps, plan.guidance, plan.keyframe_steps, plan.keyframe_guidance) == (6, 1.0, 12, 3.0)
    plan = plan_render(RenderRequest(prompt="a fox", preset=distilled.name, duration_s=2, mode="bridge"), distilled)
    assert (plan.steps, plan.guidance, plan.keyframe_steps, plan.keyframe_guidance) == (4, 1.0, 4, 0.0)


def test_a_preset_that_needs_a_last_frame_plans_keyframes_only():
    flf2v = load_preset("wan2.1-flf2v-720p")
    assert flf2v.modes == ("keyframes",) and default_mode(flf2v, 1) == default_mode(flf2v, 8) == "keyframes"
    plan = plan_render(RenderRequest(prompt="a fox", preset=flf2v.name, duration_s=10, mode="keyframes"), flf2v)
    assert all(s.last is not None for s in plan.segments)
    for mode in ("chain", "bridge"):
        with pytest.raises(ValueError, match=f"mode '{mode}' conditions every segment on a first and a last frame"):
            plan_render(RenderRequest(prompt="a fox", preset=flf2v.name, duration_s=10, mode=mode), flf2v)

"""The planner: a pure function from (request, preset) to a RenderPlan. No Ray, no torch.

Segment lengths obey the preset's frame rule (Wan: num_frames % 4 == 1) and maximum. In `chain`
neighbours share `overlap_frames` frames (crossfaded); in `keyframes` they share exactly one, the
keyframe. In `bridge` a bridge shares `overlap_frames` with the even segment before it (whose free
end it continues, crossfaded) and exactly one with the even segment after it: that segment's
keyframe, which the bridge ends on, so every keyframe is a frame of the output. When the frame rule
cannot fit the video exactly, the last segment runs up to `frame_modulus - 1` frames past the end and
the stitcher drops them.
"""

from __future__ import annotations

import hashlib

from orchestrator.plan import FrameRef, KeyframeSpec, RenderPlan, SegmentSpec
from orchestrator.request import RenderRequest
from pipeline.presets import Preset

# Far above a long film's needs (an hour at 30 fps in 81-frame segments is ~1,500), low enough that one
# request cannot make a plan of hundreds of thousands of tasks.
MAX_SEGMENTS = 10_000


def derive_seed(request_seed: int, kind: str, index: int) -> int:
    """Seed of one keyframe or segment, from (request seed, kind, index) only."""
    digest = hashlib.sha256(f"{request_seed}:{kind}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _even_split(total: int, parts: int) -> list[int]:
    base, rem = divmod(total, parts)
    return [base + (i < rem) for i in range(parts)]


def seam_overlaps(mode: str, overlap_frames: int, segments: int) -> list[int]:
    """Frames shared at each of the `segments - 1` seams (see the module docstring)."""
    if mode == "keyframes":
        return [1] * (segments - 1)
    if mode == "bridge":
        return [overlap_frames if seam % 2 == 0 else 1 for seam in range(segments - 1)]
    return [overlap_frames] * (segments - 1)


def _fewest_possible(total: int, mode: str, overlap_frames: int, max_len: int) -> int:
    """The smallest n whose n full-length segments, less their seams, can cover `total` frames: no
    fewer can fit. Their reach grows with n (a segment is longer than any seam), so bisect."""
    def reach(n: int) -> int:
        return n * max_len - sum(seam_overlaps(mode, overlap_frames, n))

    low, high = 1, max(1, total)
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if reach(mid) < total else (low, mid)
    return low


def fit_segments(total: int, mode: str, overlap_frames: int, max_len: int, preset: Preset) -> list[int]:
    """Segment lengths for `total` frames with the mode's overlaps at the seams.

    Fewest segments first, lengths as even as possible. The frame rule may force the lengths to
    cover up to `frame_modulus - 1` frames more than `total`; those trailing frames are dropped.
    Needs every seam shorter than `max_len` (the planner's checks keep it far below): otherwise
    more segments would not reach further.
    """
    widest_seam = max(seam_overlaps(mode, overlap_frames, 3))
    if widest_seam >= max_len:
        raise ValueError(f"overlap_frames {widest_seam} must be under the segment length {max_len}")
    m, r = preset.frame_modulus, preset.frame_remainder
    for n in range(_fewest_possible(total, mode, overlap_frames, max_len), total + 1):
        overlaps = seam_overlaps(mode, overlap_frames, n)
        need = total + sum(overlaps)
        steps_total = max(0, -(-(need - n * r) // m))
        lengths = [r + m * k for k in _even_split(steps_total, n)]
        if max(lengths) > max_len:
            continue
        excess = sum(lengths) - need
        kept = [*lengths[:-1], lengths[-1] - excess]
        shared = [sum(overlaps[max(i - 1, 0):i + 1]) for i in range(n)]
        if all(k > s for k, s in zip(kept, shared, strict=True)):
            return lengths
    raise ValueError(f"cannot split {total} frames into segments of at most {max_len} frames")


def _check(request: RenderRequest, preset: Preset, mode: str, width: int, height: int, max_len: int) -> None:
    if mode not in preset.modes:
        need = ("conditions every segment on a first and a last frame" if preset.requires_last_frame
                else "needs a first-last-frame model")
        raise ValueError(f"mode {mode!r} {need}; preset {preset.name!r} supports: {', '.join(preset.modes)}")
    for name, value in (("width", width), ("height", height)):
        if value % preset.spatial_multiple:
            raise ValueError(
                f"{name} {value} is not a multiple of {preset.spatial_multiple} (preset {preset.name!r}); "
                f"try {round(value / preset.spatial_multiple) * preset.spatial_multiple or preset.spatial_multiple}"
            )
    if width * height > preset.max_area:
        raise ValueError(
            f"width x height {width}x{height} is over the {preset.max_area} pixels preset {preset.name!r} renders"
        )
    if not preset.is_valid_length(max_len) or max_len > preset.max_frames:
        raise ValueError(
            f"segment_frames {max_len} must be at most {preset.max_frames} and satisfy "
            f"num_frames % {preset.frame_modulus} == {preset.frame_remainder} (preset {preset.name!r})"
        )
    if request.total_frames < 1:
        raise ValueError(f"duration_s {request.duration_s} at {request.fps} fps is less than one frame")
    if mode != "keyframes" and request.overlap_frames * 4 >= max_len:
        # A middle segment shares frames at both ends; keep most of each segment new frames.
        raise ValueError(
            f"overlap_frames {request.overlap_frames} must be under a quarter of segment_frames {max_len}"
        )


def plan_render(request: RenderRequest, preset: Preset) -> RenderPlan:
    """Plan keyframes and segments for `request` (its mode must be set) on `preset`. Without an fps the
    video plays at the preset's native rate: a model trained at 24 fps rendered at 16 plays in slow motion."""
    mode = request.mode
    if mode is None:
        raise ValueError("mode is not set; choose chain, keyframes or bridge")
    if request.fps is None:
        request = request.model_copy(update={"fps": preset.native_fps})
    width = request.width or preset.default_width
    height = request.height or preset.default_height
    max_len = request.segment_frames or preset.max_frames
    _check(request, preset, mode, width, height, max_len)

    lengths = fit_segments(request.total_frames, mode, request.overlap_frames, max_len, preset)
    if len(lengths) > MAX_SEGMENTS:
        raise ValueError(
            f"{request.total_frames} frames in segments of at most {max_len} frames need {len(lengths)} segments; "
            f"the limit is {MAX_SEGMENTS}: raise segment_frames, or lower duration_s or fps"
        )
    overlaps = seam_overlaps(mode, request.overlap_frames, len(lengths))
    starts = [0]
    for length, shared in zip(lengths, overlaps, strict=False):
        starts.append(starts[-1] + length - shared)

    anchors = {"chain": [0], "keyframes": list(range(len(lengths) + 1)), "bridge": list(range(0, len(lengths), 2))}
    keyframe_frames = [starts[i] if i < len(starts) else starts[-1] + lengths[-1] - 1 for i in anchors[mode]]
    images = _keyframe_images(request, keyframe_frames, max_len // 2)
    keyframes = [
        KeyframeSpec(
            index=k, frame=frame, prompt=request.prompt_at(frame / request.fps),
            seed=derive_seed(request.seed, "keyframe", k),
            source="image" if k in images else "t2i", image=images.get(k),
        )
        for k, frame in enumerate(keyframe_frames)
    ]
    segments = []
    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        prev_overlap = overlaps[i - 1] if i > 0 else 0
        next_overlap = overlaps[i] if i < len(overlaps) else 0
        first, last, wave = _conditioning(mode, i, starts, lengths, overlaps)
        segments.append(SegmentSpec(
            index=i, start_frame=start, num_frames=length, overlap_prev=prev_overlap, overlap_next=next_overlap,
            wave=wave, first=first, last=last, prompt=request.prompt_at(start / request.fps),
            seed=derive_seed(request.seed, "segment", i),
        ))
    steps = request.steps or preset.steps
    guidance = preset.guidance if request.guidance is None else request.guidance
    keyframe_steps, keyframe_guidance = preset.keyframe_sampling(steps, guidance)
    return RenderPlan(
        preset=preset.name, mode=mode, width=width, height=height, fps=request.fps,
        total_frames=request.total_frames, steps=steps, guidance=guidance, keyframe_steps=keyframe_steps,
        keyframe_guidance=keyframe_guidance, keyframes=keyframes, segments=segments,
    )


def _keyframe_images(request: RenderRequest, keyframe_frames: list[int], reach: int) -> dict[int, str]:
    """Keyframe index -> user image: `--image` is keyframe 0; a storyboard image goes to the
    keyframe nearest its time, which must lie within `reach` frames and inside the video (a last
    segment trimmed to the duration can end on a keyframe past the end, where an image never shows)."""
    wanted = [("image", 0.0, request.image)] if request.image else []
    wanted += [(f"storyboard[{i}]", e.at_s, e.image) for i, e in enumerate(request.storyboard) if e.image]
    images: dict[int, str] = {}
    owners: dict[int, str] = {}
    shown = [j for j, f in enumerate(keyframe_frames) if f < request.total_frames]
    for owner, at_s, image in wanted:
        frame = round(at_s * request.fps)
        k = min(shown, key=lambda j: abs(keyframe_frames[j] - frame))
        if abs(keyframe_frames[k] - frame) > reach:
            if request.mode == "keyframes":
                other = "use "
            else:
                other = "use keyframes mode (a keyframe at every segment boundary) or "
            raise ValueError(
                f"{owner} at {at_s} s has no keyframe near it in {request.mode} mode (keyframes at "
                f"{', '.join(f'{keyframe_frames[j] / request.fps:.2f}' for j in shown)} s); move it to one of "
                f"those times, or {other}a smaller --segment-frames"
            )
        if k in images:
            raise ValueError(
                f"{owners[k]} and {owner} both fall on keyframe {k} at {keyframe_frames[k] / request.fps:.2f} s; "
                "give one image per keyframe"
            )
        images[k], owners[k] = image, owner
    return images


def _conditioning(mode: str, i: int, starts: list[int], lengths: list[int],
                  overlaps: list[int]) -> tuple[FrameRef, FrameRef | None, int]:
    """(first, last, wave) of segment i."""
    if mode == "chain":
        first = FrameRef(source="keyframe", index=0) if i == 0 else \
            FrameRef(source="segment", index=i - 1, frame=starts[i] - starts[i - 1])
        return first, None, i
    if mode == "keyframes":
        return FrameRef(source="keyframe", index=i), FrameRef(source="keyframe", index=i + 1), 0
    if i % 2 == 0:
        return FrameRef(source="keyframe", index=i // 2), None, 0
    # A bridge continues its left neighbour from the start of their overlap and ends on its right
    # neighbour's keyframe.
    first = FrameRef(source="segment", index=i - 1, frame=starts[i] - starts[i - 1])
    last = FrameRef(source="keyframe", index=(i + 1) // 2) if i + 1 < len(lengths) else None
    return first, last, 1


def default_mode(preset: Preset, workers: int) -> str:
    """`bridge` when several workers can share the work and the preset can bridge, else `chain`; `keyframes`
    for a preset that renders nothing else."""
    if preset.modes == ("keyframes",):
        return "keyframes"
    return "bridge" if workers > 1 and "bridge" in preset.modes else "chain"

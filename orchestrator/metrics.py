"""Prometheus metrics of one JobRunner, kept where the work happens.

Serve runs its HTTP replicas in other processes than the runner, so the runner owns the registry:
counters and the histogram are updated as its dispatcher finishes tasks and encodes frames, gauges
are read from the runner's own state at scrape time, and `GET /metrics` on the ingress returns
`RunnerMetrics.exposition()` fetched over one actor call.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from orchestrator.jobs import JobStatus

# Segment wall times span a tiny CPU segment (a fraction of a second) to a 720p GPU one (minutes).
SEGMENT_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class RunnerGauges:
    """A collector reading the runner's state at scrape time: jobs by state, workers, queued tasks."""

    def __init__(self, jobs_by_state: Callable[[], dict[str, int]], workers: Callable[[], dict],
                 tasks_waiting: Callable[[], int]):
        self._jobs_by_state, self._workers, self._tasks_waiting = jobs_by_state, workers, tasks_waiting

    def collect(self):
        jobs = GaugeMetricFamily("minutereel_jobs", "Jobs in the jobs root, by state.", labels=["state"])
        counts = self._jobs_by_state()
        for state in JobStatus.__args__:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        occupancy = self._workers()
        workers = GaugeMetricFamily("minutereel_workers", "Live shard groups of the worker pool, busy or idle.",
                                    labels=["state"])
        workers.add_metric(["busy"], occupancy["busy"])
        workers.add_metric(["idle"], occupancy["groups"] - occupancy["busy"])
        yield workers
        yield GaugeMetricFamily("minutereel_active_jobs", "Unfinished jobs the runner is driving.",
                                value=occupancy["active_jobs"])
        yield GaugeMetricFamily("minutereel_queue_depth", "Keyframes and segments of active jobs not started yet.",
                                value=self._tasks_waiting())


class RunnerMetrics:
    """The runner's registry. `task_done` and `frames_encoded` are called from its dispatcher thread."""

    def __init__(self, gauges: RunnerGauges):
        self.registry = CollectorRegistry(auto_describe=True)
        self.rendered = {
            "keyframe": Counter("minutereel_keyframes_rendered", "Keyframes rendered (not resumed from disk).",
                                registry=self.registry),
            "segment": Counter("minutereel_segments_rendered", "Segments rendered (not resumed from disk).",
                               registry=self.registry),
        }
        self.segment_seconds = Histogram("minutereel_segment_render_seconds",
                                         "Wall time of one segment render on a shard group, in seconds.",
                                         buckets=SEGMENT_SECONDS_BUCKETS, registry=self.registry)
        self.keyframe_seconds = Histogram("minutereel_keyframe_render_seconds",
                                          "Wall time of one keyframe (T2I) render on a shard group, in seconds.",
                                          buckets=SEGMENT_SECONDS_BUCKETS, registry=self.registry)
        self.frames = Counter("minutereel_frames_encoded", "Video frames piped into the encoder.",
                              registry=self.registry)
        self.jobs_ended = Counter("minutereel_jobs_ended", "Jobs that ended, by how.", ["state"],
                                  registry=self.registry)
        self.registry.register(gauges)

    def task_done(self, kind: str, seconds: float) -> None:
        """One keyframe or segment rendered in `seconds` of wall time."""
        self.rendered[kind].inc()
        (self.segment_seconds if kind == "segment" else self.keyframe_seconds).observe(seconds)

    def frames_encoded(self, count: int) -> None:
        if count > 0:
            self.frames.inc(count)

    def exposition(self) -> bytes:
        """Everything in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)

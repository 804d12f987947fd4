"""Batch renders from a YAML spec: what `ray job submit ... -- python -m orchestrator.batch` runs.

    jobs_root: /data/jobs
    engine: {parallel: {workers: 4}}          # optional: model, parallel, stitch
    renders:
      - {id: intro, prompt: "a lighthouse at dusk", duration_s: 60}
      - {id: story, storyboard: [{at_s: 0, prompt: "..."}, ...], duration_s: 30, mode: bridge}

Each entry renders to <jobs_root>/<id>/output.mp4. Re-running the same spec skips finished
entries and resumes partial ones from their saved segments. Exits 1 if any entry failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import environment
from orchestrator.config import EngineConfig
from orchestrator.jobs import TERMINAL, JobStore
from orchestrator.request import RenderRequest

logger = logging.getLogger(__name__)


class BatchSpec(BaseModel):
    """A batch spec file."""

    model_config = ConfigDict(extra="forbid")

    jobs_root: Path = Field(description="Directory holding one folder per entry.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Model, pool and stitch settings.")
    renders: list[dict[str, Any]] = Field(min_length=1, description="Entries: an `id` plus RenderRequest fields.")


def load_spec(path: Path) -> BatchSpec:
    try:
        return BatchSpec.model_validate(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as err:
        raise ValueError(f"batch spec {str(path)!r} is invalid: {err}") from err


def _entry(raw: dict[str, Any]) -> tuple[str, RenderRequest]:
    fields = dict(raw)
    entry_id = str(fields.pop("id", ""))
    return entry_id, RenderRequest.model_validate(fields)


def run_batch(spec: BatchSpec) -> list[dict]:
    """Render every entry; returns one summary row per entry. The entries are checked first: when every one
    is finished (or refused), no Ray connection or worker pool is started."""
    from orchestrator.engine import connect_ray
    from orchestrator.runner import JobRunner

    store = JobStore(spec.jobs_root)
    started = time.perf_counter()
    checked = [_check_entry(store, raw) for raw in spec.renders]
    rows: dict[str, dict] = {row["id"]: row for row, _, _ in checked}
    work = [(row, action, request) for row, action, request in checked if action is not None]
    if work:
        connect_ray(spec.engine.ray_address)
        runner = JobRunner(spec.engine, str(spec.jobs_root), max_active_jobs=len(work))
        try:
            for row, action, request in work:
                _start_entry(runner, row, action, request)
            _wait(runner, [r["id"] for r in rows.values() if r["state"] not in TERMINAL])
        finally:
            runner.shutdown()
    else:
        print("nothing to render: every entry is finished or refused (no worker pool started)")
    for entry_id, row in rows.items():
        if row["action"] != "skipped" and store.exists(entry_id):
            state = store.open(entry_id).state()
            row.update(state=state.state, error=state.error, frames=state.progress.frames_written)
        row["seconds"] = round(time.perf_counter() - started, 1)
    return list(rows.values())


def _check_entry(store: JobStore, raw: dict[str, Any]) -> tuple[dict, str | None, RenderRequest | None]:
    """(its summary row, what it needs: "render", "resume" or None, its request) for one entry of the spec."""
    entry_id = str(raw.get("id", "?"))
    row = {"id": entry_id, "action": "failed", "state": "failed", "frames": 0, "error": None}
    try:
        entry_id, request = _entry(raw)
        row["id"] = entry_id
        if not store.exists(entry_id):
            return row, "render", request
        job = store.open(entry_id)
        job.resume_request(request, f"Give entry {entry_id!r} a new id to render it as a new job.")
        state = job.state()
        if state.state == "done" and job.output.exists():
            row.update(action="skipped", state="done", frames=state.progress.frames_written)
            return row, None, request
        return row, "resume", request
    except (ValueError, ValidationError) as err:
        row["error"] = _first_line(err)
    return row, None, None


def _start_entry(runner, row: dict, action: str, request: RenderRequest) -> None:
    try:
        if action == "render":
            runner.submit(request, job_id=row["id"])
            row.update(action="rendered", state="rendering")
        else:
            runner.resume(row["id"])
            row.update(action="resumed", state="rendering")
    except (ValueError, ValidationError) as err:
        row["error"] = _first_line(err)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if isinstance(err, ValidationError) else str(err)


def _wait(runner, job_ids: list[str], poll_s: float = 0.5) -> None:
    while any(runner.status(job_id)["state"] not in TERMINAL for job_id in job_ids):
        time.sleep(poll_s)


def print_summary(rows: list[dict]) -> None:
    print(f"{'id':<24} {'action':<9} {'state':<10} {'frames':>7}  error")
    for row in rows:
        print(f"{row['id']:<24} {row['action']:<9} {row['state']:<10} {row['frames']:>7}  {row['error'] or ''}")
    failed = sum(row["state"] != "done" for row in rows)
    print(f"{len(rows) - failed} done, {failed} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path, help="YAML batch spec")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        spec = load_spec(args.spec)
        if spec.engine.ray_address is None and environment.ray_address():
            # Under `ray job submit` (or RAY_ADDRESS), attach to that cluster instead of starting one.
            spec = spec.model_copy(update={"engine": spec.engine.model_copy(
                update={"ray_address": environment.ray_address()})})
        rows = run_batch(spec)
    except ValueError as err:
        print(f"batch: {err}", file=sys.stderr)
        return 2
    print_summary(rows)
    return 0 if all(row["state"] == "done" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

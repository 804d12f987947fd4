"""A job directory answers for the request it was made for: resuming it with another names the change."""

import pytest

from orchestrator.batch import _check_entry
from orchestrator.cli import main
from orchestrator.jobs import JobStore
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from pipeline.presets import load_preset, weights_id

TINY = load_preset("tiny")


def test_a_different_request_names_each_changed_field(tmp_path):
    job = JobStore(tmp_path).create(RenderRequest(prompt="a fox", duration_s=8.0, seed=1))
    job.resume_request(RenderRequest(prompt="a fox", duration_s=8.0, seed=1), "fix")  # same: no error
    with pytest.raises(ValueError) as err:
        job.resume_request(RenderRequest(prompt="a fox", duration_s=9.0, seed=2), "Use a new id.")
    message = str(err.value)
    assert "duration_s (8.0 here, 9.0 given)" in message and "seed (1 here, 2 given)" in message
    assert "prompt" not in message and message.endswith("Use a new id.")


def test_long_prompts_and_storyboards_show_where_they_changed(tmp_path):
    prompt = "a fox running through a snowy forest at dawn, cinematic"
    story = [{"at_s": s, "prompt": f"shot {s}"} for s in range(8)]
    job = JobStore(tmp_path).create(RenderRequest(prompt=prompt, storyboard=story, duration_s=10))
    changed = [*story[:7], {"at_s": 7, "prompt": "shot seven"}]
    with pytest.raises(ValueError) as err:
        job.resume_request(RenderRequest(prompt=prompt.replace("dawn", "dusk"), storyboard=changed, duration_s=10),
                           "fix")
    message = str(err.value)
    assert "prompt from character 41 (...'orest at dawn, cinematic' here, ...'orest at dusk, cinematic' given)" \
        in message
    assert "storyboard[7].prompt ('shot 7' here, 'shot seven' given)" in message


def test_unset_fields_keep_what_the_job_chose(tmp_path):
    """A job made with fps 16 stated, or with the mode left to the worker count, resumes with the same
    flags after the fps default changed or the worker count did."""
    job = JobStore(tmp_path).create(RenderRequest(prompt="a fox", fps=16))
    job.save_plan(plan_render(RenderRequest(prompt="a fox", fps=16, mode="chain"), TINY))
    resumed = job.resume_request(RenderRequest(prompt="a fox"), "fix")
    assert (resumed.fps, resumed.mode, resumed.width, resumed.steps) == (16, "chain", 128, 4)
    assert job.resume_request(RenderRequest(prompt="a fox", mode="chain", width=128), "fix") == resumed
    with pytest.raises(ValueError, match=r"mode \('chain' here, 'bridge' given\)"):
        job.resume_request(RenderRequest(prompt="a fox", mode="bridge"), "fix")


def test_cli_resume_with_other_flags_names_the_flag_and_starts_nothing(tmp_path, capsys):
    JobStore(tmp_path).create(RenderRequest(prompt="a fox", duration_s=8.0), job_id="kept")
    code = main(["render", "--prompt", "a fox", "--duration", "10", "--job-dir", str(tmp_path / "kept"), "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "duration_s (8.0 here, 10.0 given)" in err and "--job-dir" in err and "Traceback" not in err


def test_cli_resume_under_other_weights_is_refused_before_any_model_loads(tmp_path, capsys):
    job = JobStore(tmp_path).create(RenderRequest(prompt="a fox", duration_s=8.0), job_id="kept")
    planned = plan_render(RenderRequest(prompt="a fox", duration_s=8.0, mode="chain"), TINY)
    job.save_plan(planned.model_copy(update={"weights": weights_id(TINY, "none")}))
    flags = ["render", "--prompt", "a fox", "--duration", "8", "--job-dir", str(tmp_path / "kept"), "--resume"]
    assert main([*flags, "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "rendered with i2v=embedded://tiny/i2v@" in err and "quantize=int8 is loaded now" in err


def test_batch_entry_that_changed_since_its_job_is_a_row_error(tmp_path):
    store = JobStore(tmp_path)
    store.create(RenderRequest(prompt="a fox"), job_id="fox")
    row, action, _ = _check_entry(store, {"id": "fox", "prompt": "a wolf"})  # checked before any runner exists
    assert action is None and row["state"] == "failed" and "prompt ('a fox' here, 'a wolf' given)" in row["error"]
    assert "new id" in row["error"]


def test_the_lifecycle_refuses_a_transition_it_does_not_allow(tmp_path):
    from orchestrator.jobs import JobStore
    from orchestrator.request import RenderRequest

    job = JobStore(tmp_path).create(RenderRequest(prompt="a fox"), job_id="j")
    with pytest.raises(RuntimeError, match="cannot go from queued to done"):
        job.update(state="done")
    for state in ("planning", "rendering", "stitching"):
        job.update(state=state)
    assert job.end(None) == "done" and job.state().history == ["queued", "planning", "rendering", "stitching", "done"]
    job.requeue()  # a re-run of a finished job starts over
    assert job.end(ValueError("bad plan")) == "failed" and job.state().error == "ValueError: bad plan"

"""A job directory answers for the request it was made for: resuming it with another names the change."""

import pytest

from orchestrator.batch import _start_entry
from orchestrator.cli import main
from orchestrator.jobs import JobStore
from orchestrator.request import RenderRequest


def test_a_different_request_names_each_changed_field(tmp_path):
    job = JobStore(tmp_path).create(RenderRequest(prompt="a fox", duration_s=8.0, seed=1))
    job.require_request(RenderRequest(prompt="a fox", duration_s=8.0, seed=1), "fix")  # same: no error
    with pytest.raises(ValueError) as err:
        job.require_request(RenderRequest(prompt="a fox", duration_s=9.0, seed=2), "Use a new id.")
    message = str(err.value)
    assert "duration_s (8.0 here, 9.0 given)" in message and "seed (1 here, 2 given)" in message
    assert "prompt" not in message and message.endswith("Use a new id.")


def test_cli_resume_with_other_flags_names_the_flag_and_starts_nothing(tmp_path, capsys):
    JobStore(tmp_path).create(RenderRequest(prompt="a fox", duration_s=8.0), job_id="kept")
    code = main(["render", "--prompt", "a fox", "--duration", "10", "--job-dir", str(tmp_path / "kept"), "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "duration_s (8.0 here, 10.0 given)" in err and "--job-dir" in err and "Traceback" not in err


def test_batch_entry_that_changed_since_its_job_is_a_row_error(tmp_path):
    store = JobStore(tmp_path)
    store.create(RenderRequest(prompt="a fox"), job_id="fox")
    (row,) = _start_entry(None, store, {"id": "fox", "prompt": "a wolf"}).values()  # no runner is reached
    assert row["state"] == "failed" and "prompt ('a fox' here, 'a wolf' given)" in row["error"]
    assert "new id" in row["error"]

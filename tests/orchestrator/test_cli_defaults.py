"""The CLI's flags take their defaults and help from the pydantic config models: one copy of every default."""

import pytest

from actors.config import ParallelConfig
from orchestrator import cli
from orchestrator.request import RenderRequest
from orchestrator.serve import ServeSettings
from pipeline.config import ModelConfig, SequenceParallelConfig, StitchConfig

REQUEST = {"--prompt": "prompt", "--image": "image", "--duration": "duration_s", "--fps": "fps", "--width": "width",
           "--height": "height", "--seed": "seed", "--mode": "mode", "--overlap": "overlap_frames",
           "--segment-frames": "segment_frames", "--steps": "steps", "--guidance": "guidance"}
REQUEST_FLAGS = {flag: (RenderRequest, field) for flag, field in REQUEST.items()}
MODEL_FLAGS = {"--preset": (ModelConfig, "preset"), "--quantize": (ModelConfig, "quantize"),
               "--workers": (ParallelConfig, "workers"), "--sp-degree": (SequenceParallelConfig, "degree")}
STITCH_FLAGS = {"--blend": (StitchConfig, "curve"), "--crf": (StitchConfig, "crf"), "--codec": (StitchConfig, "codec"),
                "--no-color-correction": (StitchConfig, "color_correction")}
COMMANDS = {  # command -> {flag: (model, field)}
    "render": {**REQUEST_FLAGS, **MODEL_FLAGS, **STITCH_FLAGS}, "plan": {**REQUEST_FLAGS, **MODEL_FLAGS},
    "serve": {**MODEL_FLAGS, **STITCH_FLAGS}, "stitch": STITCH_FLAGS,
}


def _actions(command: str) -> dict:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    return {flag: action for action in commands.choices[command]._actions for flag in action.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_of_a_model_field_has_its_default_and_help(command):
    actions = _actions(command)
    for flag, (model, field) in COMMANDS[command].items():
        info = model.model_fields[field]
        assert actions[flag].default == info.get_default(call_default_factory=True), flag
        if flag != "--no-color-correction":  # a negating flag says what it turns off
            assert info.description.rstrip(".") in actions[flag].help, flag


def test_default_flags_build_the_models_defaults(monkeypatch):
    monkeypatch.delenv("MINUTEREEL_CACHE", raising=False)
    args = cli.build_parser().parse_args(["render", "--prompt", "a fox", "--out", "out.mp4"])
    assert cli._request(args) == RenderRequest(prompt="a fox")
    config = cli._engine_config(args)
    assert (config.model, config.parallel, config.stitch) == (ModelConfig(), ParallelConfig(), StitchConfig())


def test_serve_flags_leave_the_settings_defaults_to_serve_settings(monkeypatch):
    monkeypatch.delenv("MINUTEREEL_CACHE", raising=False)
    args = cli.build_parser().parse_args(["serve"])
    settings = ServeSettings.model_validate(cli._serve_args(args, cli._engine_config(args), "/jobs"))
    assert settings == ServeSettings(jobs_root="/jobs")
    args = cli.build_parser().parse_args(["serve", "--max-active-jobs", "3"])
    assert cli._serve_args(args, cli._engine_config(args), "/jobs")["max_active_jobs"] == 3

"""The HTTP ingress and the batch driver import nothing model-related: torch, diffusers and transformers load
only where a pipeline runs (the shard ranks); the render driver (engine, dispatcher, sink) needs none either."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serve_and_batch_import_no_model_library():
    code = ("import json, sys; import orchestrator.serve, orchestrator.batch; "
            "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers', 'optimum') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_cli_parser_imports_no_model_library():
    # Its flags' defaults come from the config models; those must stay free of torch so `--help` answers at once.
    code = ("import json, sys; from orchestrator import cli; cli.build_parser().parse_args(['render']); "
            "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers', 'optimum') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_render_driver_imports_no_model_library():
    # The CLI's driver plans, dispatches and joins pieces; only the ranks it starts load torch (start-up time).
    code = ("import json, sys; from orchestrator.engine import RenderEngine, preflight; "
            "from orchestrator.config import EngineConfig; preflight(EngineConfig()); "
            "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers', 'optimum') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []

"""ray_cluster.yaml validates against the cluster schema shipped inside the ray package."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_ray_schema_and_declares_gpu_workers():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 2 for t in workers)


def test_serve_config_builds_the_app():
    from ray.serve.schema import ServeDeploySchema

    from orchestrator.serve import ServeSettings

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text()))
    (application,) = config.applications
    assert application.import_path == "orchestrator.serve:build_app"
    ServeSettings.model_validate({"jobs_root": "/tmp/jobs", **application.args})


def test_example_batch_spec_is_valid():
    from orchestrator.batch import _entry, load_spec

    spec = load_spec(ROOT / "configs" / "jobs" / "example.yaml")
    assert [_entry(raw)[0] for raw in spec.renders] == ["lighthouse", "storm"]

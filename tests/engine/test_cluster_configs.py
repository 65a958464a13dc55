"""The shipped cluster configs write to object storage and never hide a failed mount."""

from __future__ import annotations

import shlex

import yaml

from factory.recipe import recipe_from_dict
from tests.engine.conftest import REPO

CONFIGS = REPO / "cluster" / "configs"


def test_rayjob_builds_to_a_bucket_with_a_valid_out() -> None:
    job = yaml.safe_load((CONFIGS / "kuberay-rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    out = argv[argv.index("--out") + 1]
    assert out.startswith("s3://")
    assert recipe_from_dict({"dataset": {"out": out}}).dataset.out == out  # the recipe accepts it
    volumes = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert all(v["persistentVolumeClaim"]["claimName"] != "mifa-data" for v in volumes)  # no RWX output volume


def test_ray_up_setup_never_ignores_a_failed_command() -> None:
    config = yaml.safe_load((CONFIGS / "ray-up-gpu.yaml").read_text())
    commands = config["setup_commands"] + config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not [c for c in commands if "|| true" in c]
    text = (CONFIGS / "ray-up-gpu.yaml").read_text()
    assert "--out s3://" in text and "IamInstanceProfile" in text

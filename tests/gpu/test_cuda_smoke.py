"""CUDA smoke test: the shard worker's in-process pipeline on CUDA with full-size random-weight models.

Marked ``gpu`` (``make test-gpu``; ``bench/gpu_device_run.sh`` runs it on a device). Without a
CUDA device it is skipped, and the reason is printed: issue 24 allows exactly this skip, while
the same harness runs at tiny size on the CPU in ``tests/gpu/test_harness_tiny.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.gpu_models import models_at
from tests.gpu.smoke import check_smoke, run_smoke

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: the CUDA smoke test needs one (issue 24 allows this skip; the tiny CPU "
        "variant of the same harness runs in make test)",
    ),
]


def test_the_shard_worker_runs_the_full_size_chain_on_cuda(tmp_path: Path) -> None:
    # MIFA_GPU_MODELS: a folder the device script shares with the bench (the models are built once).
    folders = models_at(Path(os.environ.get("MIFA_GPU_MODELS", tmp_path / "models")), "full", device="cuda")
    smoke = run_smoke(folders, tmp_path / "out", batch_size=4, steps=4)
    check_smoke(smoke, "cuda", generator_dtype="float16")
    print("ONNX providers:", smoke.onnx_providers)  # CPU-only onnxruntime runs scrfd and LibreFace on the CPU

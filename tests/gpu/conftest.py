"""The tiny random-weight models of the per-GPU chain, built once for the tests of tests/gpu."""

from __future__ import annotations

import pytest

from bench.gpu_models import ModelFolders, build_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> ModelFolders:
    return build_models(tmp_path_factory.mktemp("gpu_models"), "tiny")

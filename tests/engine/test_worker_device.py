"""Which device a shard worker picks, and that a machine without a GPU driver never pays a
torch import to learn it is 'cpu'."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from factory.engine import worker


def _torch_saying(available: bool) -> types.ModuleType:
    fake = types.ModuleType("torch")
    fake.cuda = types.SimpleNamespace(is_available=lambda: available)  # type: ignore[attr-defined]
    return fake


class _Untouchable(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"torch.{name} was used on a machine without a GPU driver")


def test_without_a_gpu_driver_the_worker_is_on_cpu_without_asking_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "gpu_driver_present", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", _Untouchable("torch"))
    assert worker.device_for_worker() == "cpu"


@pytest.mark.parametrize(("available", "device"), [(True, "cuda"), (False, "cpu")])
def test_with_a_gpu_driver_torch_decides(available: bool, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "gpu_driver_present", lambda: True)
    monkeypatch.setitem(sys.modules, "torch", _torch_saying(available))
    assert worker.device_for_worker() == device


def test_a_driver_is_seen_by_its_device_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    seen: list[str] = []

    class FakePath(type(tmp_path)):  # type: ignore[misc]
        def exists(self) -> bool:
            seen.append(str(self))
            return str(self) == "/dev/kfd"

    monkeypatch.setattr(worker, "Path", FakePath)
    assert worker.gpu_driver_present() is True
    assert "/proc/driver/nvidia" in seen
    monkeypatch.setattr(FakePath, "exists", lambda self: False)
    monkeypatch.setattr(FakePath, "glob", lambda self, pattern: iter([FakePath("/dev/nvidia0")]))
    assert worker.gpu_driver_present() is True
    monkeypatch.setattr(FakePath, "glob", lambda self, pattern: iter([]))
    assert worker.gpu_driver_present() is False

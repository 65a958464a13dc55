"""`make bench`: run every benchmark and rewrite BENCHMARKS.md with the results.

``bench_gpu`` (the per-GPU benchmark at full size) runs only where a CUDA device is; elsewhere
its section of BENCHMARKS.md is kept as it was (a device's numbers, or "not measured").

``python -m bench.run_all bench_tools`` runs only the named benchmarks and replaces only
their sections (each section sits between ``<!-- bench:NAME -->`` markers), keeping the rest
of BENCHMARKS.md as it was.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import re
import sys
import traceback
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BENCHES = (
    "bench_plan",
    "bench_record",
    "bench_writer",
    "bench_engine",
    "bench_warp",
    "bench_generators",
    "bench_tools",
    "bench_storage",
    "bench_balance",
)
GPU_BENCH = "bench_gpu"


def _cuda() -> bool:
    try:
        import torch  # deferred: optional and heavy; only asked whether a CUDA device is here
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _section(text: str, name: str) -> str | None:
    """The marked section of ``name`` in ``text``, markers included, or None."""
    found = re.search(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", text, re.S)
    return found.group(0) if found else None


def _machine() -> str:

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gib = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {gib:.0f} GiB RAM, Python {platform.python_version()}"


def _marked(name: str, body: str) -> str:
    return f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"


def _run(name: str) -> str:
    print(f"running bench.{name} ...", file=sys.stderr, flush=True)
    sys.argv = [name]  # benchmarks that parse options see none of ours
    try:
        return importlib.import_module(f"bench.{name}").main()
    except Exception:  # one broken benchmark must not hide the others' numbers
        return f"### bench.{name}\n\nFAILED:\n\n```\n{traceback.format_exc()}\n```"


def _update(text: str, name: str, section: str, stamp: str) -> str:
    """``text`` with the section of ``name`` replaced (or appended), noting when it was measured."""
    body = _marked(name, f"{section}\n\n_Measured {stamp} with `python -m bench.run_all {name}`._")
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: body, text)
    return text.rstrip("\n") + "\n\n" + body + "\n"


def main(names: list[str]) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    path = REPO / "BENCHMARKS.md"
    if names and path.exists():
        text = path.read_text()
        for name in names:
            text = _update(text, name, _run(name), f"on {now}; machine: {_machine()}")
        path.write_text(text)
        print(text)
        return
    sections = [_marked(name, _run(name)) for name in BENCHES]
    if _cuda():
        sections.append(_marked(GPU_BENCH, _run(GPU_BENCH)))
    elif path.exists() and (kept := _section(path.read_text(), GPU_BENCH)):
        sections.append(kept)
    text = "\n\n".join(
        [
            "# Benchmarks",
            f"Produced by `make bench` (`python -m bench.run_all`) on {now}; machine: "
            f"{_machine()}. Ratios are measured within one run; absolute numbers vary with load.",
            *sections,
        ]
    )
    path.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])

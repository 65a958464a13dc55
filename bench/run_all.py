"""`make bench`: run every benchmark and rewrite BENCHMARKS.md with the results."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
import traceback
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BENCHES = ("bench_plan", "bench_writer", "bench_engine", "bench_warp", "bench_generators")


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


def main(names: list[str]) -> None:
    sections = []
    for name in names or BENCHES:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        sys.argv = [name]  # benchmarks that parse options see none of ours
        try:
            sections.append(importlib.import_module(f"bench.{name}").main())
        except Exception:  # one broken benchmark must not hide the others' numbers
            sections.append(f"### bench.{name}\n\nFAILED:\n\n```\n{traceback.format_exc()}\n```")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n\n".join(
        [
            "# Benchmarks",
            f"Produced by `make bench` (`python -m bench.run_all {' '.join(names)}`) on {now}; machine: "
            f"{_machine()}. Ratios are measured within one run; absolute numbers vary with load.",
            *sections,
        ]
    )
    (REPO / "BENCHMARKS.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])

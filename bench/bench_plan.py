"""Planner benchmark: `factory plan --target 1000000` time and peak memory (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp: Path) -> Path:
    """recipes/mifa-1m.toml, with the builtin identity bank where it names a local bank folder."""
    text = (REPO / "recipes" / "mifa-1m.toml").read_text()
    path = tmp / "mifa-1m-builtin-bank.toml"
    path.write_text(text.replace('bank = "models/identity-bank"', 'bank = "builtin"'))
    return path


_MEASURE = """
import resource, subprocess, sys, time
import tempfile
t0 = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def _run(recipe: Path, target: int) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one `factory plan` process, measured by a fresh parent."""
    cmd = [sys.executable, "-m", "factory.cli", "plan", str(recipe), "--target", str(target)]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], check=True, capture_output=True, text=True, cwd=REPO
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> str:

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        recipe = _recipe(Path(tmp))
        for target in (10_000, 1_000_000):
            seconds, peak_mib = _run(recipe, target)
            rows.append(f"| {target:,} | {seconds:.1f} | {target / seconds:,.0f} | {peak_mib:.0f} |")
    return "\n".join(
        [
            "### Planner (`factory plan recipes/mifa-1m.toml --target N`)",
            "",
            "| planned samples | wall s | samples/s | peak RSS MiB |",
            "|---:|---:|---:|---:|",
            *rows,
            "",
            "Each row is one `factory plan` process (peak RSS from getrusage of a fresh parent).",
            "Memory stays flat because shards are planned and reduced into the statistics one at a time.",
        ]
    )


if __name__ == "__main__":
    print(main())

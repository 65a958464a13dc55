"""The record-shape benchmark runs and reports every shape it compares (its numbers live in BENCHMARKS.md)."""

from __future__ import annotations

from bench.bench_record import main


def test_every_shape_is_measured_on_a_small_batch() -> None:
    section = main(["--records", "200", "--repeat", "1"])
    rows = [line for line in section.splitlines() if line.startswith("| ") and "ms per" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        "dict + declared key set (chosen)",
        "dict, no key check",
        "slotted dataclass, dict at the edges",
        "pydantic model (validated), dict at the edges",
    ]
    assert all(float(row.rstrip(" |").rsplit("| ", 1)[1]) > 0 for row in rows)
    assert "`Pipeline.check` of recipes/demo.toml" in section

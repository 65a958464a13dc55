"""``factory verify RUN [--repair]``: check every file of a dataset; quarantine what is bad."""

from __future__ import annotations

from pathlib import Path

from manifests.repair import RepairError, RepairResult, repair
from manifests.verify import VerifyReport, verify_dataset

__all__ = ["RepairError", "run_verify", "summary_lines"]


def run_verify(run_dir: Path, *, fix: bool = False) -> tuple[VerifyReport, RepairResult | None]:
    """The verification report, and with ``fix`` the repair done on it (``RepairError`` when
    the dataset cannot be repaired in place)."""
    report = verify_dataset(run_dir)
    return report, (repair(report) if fix and not report.ok else None)


def summary_lines(report: VerifyReport, result: RepairResult | None) -> list[str]:
    """What to print: the verdict, the findings by kind, and after a repair what comes next."""
    what = "subset" if report.subset else "dataset"
    if report.pending_repair is not None:
        return [
            f"{report.root}: {report.findings[0].message}",
            f"run `factory retry {report.root}` to rebuild them and write the index (nothing else is redone)",
        ]
    if report.ok:
        whole = f"{report.shards_checked} shards, {report.samples} samples"
        late = f" (done shards beyond the index, kept as surplus: {report.late_surplus})" if report.late_surplus else ""
        return [f"{report.root}: {what} {report.dataset} is whole: {whole}{late}"]
    lines = [f"{report.root}: {len(report.findings)} problem(s) in {report.shards_checked} indexed shards"]
    for kind, label in (("missing", "missing shards"), ("corrupt", "corrupt shards"), ("extra", "extra shards")):
        shards = report.shards(kind)  # type: ignore[arg-type]
        if shards:
            lines.append(f"  {label}: {shards}")
    lines += [f"  {f.kind}: {f.message}" for f in report.findings]
    if result is not None and result.quarantine is not None:
        lines.append(f"repaired: {len(result.moved)} file(s) moved to {result.quarantine} (nothing deleted)")
        lines.append(
            f"  the next build redoes shard(s) {result.shards} from their recorded plans and rewrites the index: "
            f"run `factory retry {report.root}` (or `factory build` with its recipe)"
        )
    elif not report.subset:
        lines.append(f"run `factory verify {report.root} --repair` to set the bad shards aside for the next build")
    return lines

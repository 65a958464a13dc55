"""`factory status` and `factory doctor`: the state of a build, and what is usable here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from factory.cli.common import RunArg, load, out
from factory.commands.doctor import blocking, run_checks
from factory.commands.status import damage_error, run_status
from manifests.errors import FailedError


def status(
    run_dir: RunArg,
    verify: Annotated[bool, typer.Option("--verify", help="Also read every shard file back.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show planned / running / done / failed shards and accepted counts of a build."""

    s = run_status(run_dir, verify=verify)
    if as_json:
        out.print_json(json.dumps(s, default=str))
    else:
        state = (
            "[green]complete[/]"
            if s["complete"]
            else ("[yellow]running[/]" if s["build_running"] else "[yellow]incomplete[/]")
        )
        out.print(f"{s['run_dir']} ({s['dataset']}): {state}")
        out.print(
            f"  shards: {s['planned_shards']} planned, {s['done_shards']} done, "
            f"{len(s['running_shards'])} running, {len(s['unfinished_shards'])} unfinished, "
            f"{len(s['failed_shards'])} failed"
        )
        out.print(
            f"  accepted: {s['accepted_in_done_shards']} of {s['planned_in_done_shards']} generated; "
            f"target {s['target']}"
        )
        if s["index"]:
            ix = s["index"]
            out.print(
                f"  index: {ix.get('accepted')} samples in {len(ix.get('shards', []))} shards "
                f"(surplus {ix.get('surplus_shards', [])})"
            )
            if ix.get("short"):
                out.print(f"  [yellow]ended short of the target[/]: {ix['short']}", highlight=False)
        if s.get("balance"):
            out.print(_balance_table(s["balance"]))
            for cell, cause in s["balance"].get("causes", {}).items():
                out.print(f"  infeasible {cell}: {cause}", highlight=False)
        for r in s.get("rounds", []):
            out.print(_round_line(r), highlight=False)
        for w in s.get("workers", []):
            out.print(_worker_line(w), highlight=False)
        for shard, error in s["failed_shards"].items():
            out.print(f"  [red]failed[/] shard {shard}: {error.splitlines()[0][:200]}")
        for shard, reason in s["damaged_shards"].items():
            out.print(f"  [red]damaged[/] shard {shard}: {reason}", highlight=False)
        for problem in s.get("problems", []):
            out.print(f"  [red]problem[/]: {problem}")
        if s.get("verified") and not s["problems"]:
            out.print("  verified: every indexed shard file read back and matched its manifest and stats")
    if s["damaged_shards"]:
        raise damage_error(s)
    if s.get("problems"):
        raise typer.Exit(1)


def _balance_table(balance: dict[str, Any]) -> Table:
    """Delivered vs target per cell (``factory.commands.status.delivered_balance``)."""
    verdict = "[green]all met[/]" if balance["met"] else "[yellow]some missed[/]"
    title = f"delivered balance of {balance['samples']} samples: {verdict}"
    if balance["infeasible"]:
        title += f"; infeasible: {', '.join(balance['infeasible'])}"
    table = Table(title=title, title_justify="left")
    for column in ("cell", "samples", "delivered", "target", "tolerance", ""):
        table.add_column(column)
    for c in balance["cells"]:
        mark = "infeasible" if c["infeasible"] else ("[green]met[/]" if c["met"] else "[red]missed[/]")
        row = (c["cell"], str(c["samples"]), f"{c['share']:.3f}", f"{c['target']:.3f}", f"±{c['tolerance']:.3f}", mark)
        table.add_row(*row)
    return table


def _round_line(r: dict[str, Any]) -> str:
    """One closed-loop round: its shards, counts, and emotion mix planned -> delivered (kept)."""
    shards = r["shards"]
    span = f"{shards[0]}-{shards[-1]}" if len(shards) > 1 else str(shards[0])
    mix = ", ".join(
        f"{e} {n}->{r['kept_mix'].get(e, 0)}" for e, n in sorted(r["planned_mix"].items(), key=lambda kv: -kv[1])
    )
    return (
        f"  round {r['round']} (shards {span}): planned {r['planned']}, accepted {r['accepted']}, "
        f"kept {r['kept']}; emotions planned->kept: {mix}"
    )


def _worker_line(w: dict[str, Any]) -> str:
    gpu = ",".join(w.get("gpu_ids") or []) or "-"
    where = f"{w.get('host')} GPU {gpu} (CUDA_VISIBLE_DEVICES={w.get('cuda_visible_devices') or '-'})"
    if w.get("shard") is None:
        return f"  worker {w['worker']}: {where}: {w.get('state', 'idle')}"
    backup = " (backup copy)" if w.get("backup") else ""
    return (
        f"  worker {w['worker']}: {where}: shard {w['shard']}{backup} {w['samples']}/{w['planned']} samples, "
        f"{w['samples_per_s']:.1f} samples/s" + (f", queued {w['queued']}" if w.get("queued") else "")
    )


def doctor(
    recipe: Annotated[Path | None, typer.Argument(help="Also check this recipe's models and endpoints.")] = None,
) -> None:
    """Report which optional parts are usable here: Ray, GPUs, packages, model paths, LLM endpoint."""

    r = load(recipe) if recipe else None
    table = Table(title="factory doctor")
    table.add_column("check")
    table.add_column("usable")
    table.add_column("detail")
    checks = run_checks(r)
    for c in checks:
        usable = "[red]no[/]" if not c.ok else "[yellow]yes, warning[/]" if c.warning else "[green]yes[/]"
        table.add_row(c.name, usable, c.detail)
    out.print(table)
    failed = blocking(checks)
    if failed:
        raise FailedError(
            f"{len(failed)} check(s) a build would stop at failed: {', '.join(c.name for c in failed)}; "
            "fix them as the table above says"
        )

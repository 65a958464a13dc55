"""`factory`: the command line. It parses and calls; the logic lives in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="factory",
    help="Build MIFA-style datasets: synthetic faces with facial Action Unit labels.\n\n"
    "Typical use: `factory doctor recipes/demo.toml`, `factory plan recipes/demo.toml`, "
    "`factory build recipes/demo.toml`, `factory status runs/demo`, `factory eval runs/demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
identities_app = typer.Typer(help="Identity bank tools.", no_args_is_help=True)
models_app = typer.Typer(help="Official model weights: list them and download them.", no_args_is_help=True)
app.add_typer(identities_app, name="identities")
app.add_typer(models_app, name="models")

# Wide tables in logs and CI (a pipe has no terminal width to follow).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe TOML file, e.g. recipes/demo.toml.")]
RunArg = Annotated[Path, typer.Argument(help="A build's output directory (its --out).")]
TargetOpt = Annotated[
    int | None, typer.Option("--target", help="Accepted samples to build (overrides dataset.target).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Master seed (overrides dataset.seed).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Output directory (overrides dataset.out).")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(recipe: Path, **overrides: Any):  # -> Recipe
    from factory.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, **{k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
    except RecipeError as exc:
        _fail(str(exc), code=2)


@app.command()
def plan(
    recipe: RecipeArg,
    target: Annotated[int | None, typer.Option("--target", help="Samples to plan (default: dataset.target).")] = None,
    seed: SeedOpt = None,
) -> None:
    """Plan samples and print their balance: AU shares, intensities, emotions, demographics.

    Nothing is written; `factory build` writes each shard's plan before running it.
    """
    from factory.aus import DISFA_AUS
    from factory.identities import IdentityBankError, open_bank
    from factory.plan import plan_statistics
    from factory.recipe import RecipeError

    r = _load(recipe, target=target, seed=seed)
    try:
        bank = open_bank(r.identities.bank)
        stats = plan_statistics(r, r.dataset.target, bank.records() if bank else None)
    except (RecipeError, IdentityBankError) as exc:
        _fail(str(exc), code=2)
    table = Table(title=f"{stats.n} planned samples ({r.dataset.shard_size} per shard)")
    table.add_column("AU")
    table.add_column("active share", justify="right")
    table.add_column("target", justify="right")
    for level in range(1, 6):
        table.add_column(f"i={level}", justify="right")
    for i, au in enumerate(DISFA_AUS):
        active = max(int(stats.au_active[i]), 1)
        table.add_row(
            f"AU{au}",
            f"{stats.au_active[i] / stats.n:.3f}",
            f"{r.aus.share(au):.3f}" if au in r.aus.units else "off",
            *[f"{stats.intensity_hist[i, lv] / active:.2f}" for lv in range(1, 6)],
        )
    out.print(table)
    for name, counts in (
        ("emotion", stats.emotions),
        ("ethnicity", stats.ethnicity),
        ("age band", stats.age_band),
        ("gender", stats.gender),
        ("identity match", stats.identity_match),
    ):
        shares = ", ".join(f"{k} {v / stats.n:.3f}" for k, v in sorted(counts.items()))
        out.print(f"[bold]{name}[/]: {shares}")
    out.print(f"[bold]constraint violations[/]: {stats.violations}")


@app.command()
def build(
    recipe: RecipeArg,
    target: TargetOpt = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPU workers, one per GPU (0: CPU workers).")] = None,
    out_dir: OutOpt = None,
    seed: SeedOpt = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster instead of a local one.")
    ] = None,
    local_gpus: Annotated[
        int | None,
        typer.Option(
            "--local-gpus",
            help="Give the local Ray cluster this many logical GPU slots (testing placement without GPUs).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a live bar (CI).")] = False,
) -> None:
    """Build the dataset, or resume it: run the same command again after a crash.

    Committed shards are kept, unfinished ones are redone, and the index is written last.
    """
    r = _load(recipe, target=target, gpus=gpus, out=out_dir, seed=seed, address=address)
    _run_build(r, local_gpus=local_gpus, quiet=quiet, retry_failed=False)


def _run_build(r: Any, *, local_gpus: int | None, quiet: bool, retry_failed: bool) -> None:
    from cluster.ray_cluster import ClusterError
    from factory.engine import BuildError
    from factory.engine import build as run_build
    from factory.identities import IdentityBankError
    from factory.state import RunError
    from stages.base import StageError

    try:
        summary = run_build(r, local_gpus=local_gpus, quiet=quiet, retry_failed=retry_failed)
    except (BuildError, RunError, ClusterError, IdentityBankError, StageError) as exc:
        _fail(str(exc))
    out.print(
        f"[bold green]dataset[/] {summary.run_dir}: {summary.accepted} accepted of "
        f"{summary.planned_samples} generated (target {summary.target}) in {len(summary.indexed_shards)} "
        f"shards, {summary.seconds:.0f} s"
    )
    if summary.stage_rates:
        out.print("per-stage samples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_rates.items()))
    if summary.surplus_shards:
        out.print(f"surplus shards kept aside (not indexed): {summary.surplus_shards}")
    if summary.failed_shards:
        _fail(
            f"{len(summary.failed_shards)} shard(s) failed and were skipped: {sorted(summary.failed_shards)}; "
            f"see {summary.run_dir}/failed/ and run `factory retry {summary.run_dir}`"
        )


@app.command()
def retry(
    run_dir: RunArg,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    local_gpus: Annotated[int | None, typer.Option("--local-gpus")] = None,
) -> None:
    """Rerun the failed shards of a build (with its recorded recipe) and re-index."""
    from factory.recipe import RecipeError, recipe_from_dict
    from factory.state import RunError
    from factory.status import open_run

    try:
        _, info = open_run(run_dir)
        r = recipe_from_dict(info["recipe"], source=str(run_dir / "run.json"))
    except (RunError, RecipeError) as exc:
        _fail(str(exc), code=2)
    _run_build(r, local_gpus=local_gpus, quiet=quiet, retry_failed=True)


@app.command()
def status(
    run_dir: RunArg,
    verify: Annotated[bool, typer.Option("--verify", help="Also read every shard file back.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show planned / running / done / failed shards and accepted counts of a build."""
    from factory.state import RunError
    from factory.status import run_status

    try:
        s = run_status(run_dir, verify=verify)
    except RunError as exc:
        _fail(str(exc), code=2)
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
        for shard, error in s["failed_shards"].items():
            out.print(f"  [red]failed[/] shard {shard}: {error.splitlines()[0][:200]}")
        for problem in s.get("problems", []):
            out.print(f"  [red]problem[/]: {problem}")
    if s.get("problems"):
        raise typer.Exit(1)


@app.command()
def doctor(
    recipe: Annotated[Path | None, typer.Argument(help="Also check this recipe's models and endpoints.")] = None,
) -> None:
    """Report which optional parts are usable here: Ray, GPUs, packages, model paths, LLM endpoint."""
    from factory.doctor import run_checks

    r = _load(recipe) if recipe else None
    table = Table(title="factory doctor")
    table.add_column("check")
    table.add_column("usable")
    table.add_column("detail")
    checks = run_checks(r)
    for c in checks:
        table.add_row(c.name, "[green]yes[/]" if c.ok else "[red]no[/]", c.detail)
    out.print(table)


@app.command()
def query(
    run_dir: RunArg,
    sql: Annotated[
        str | None, typer.Argument(help='SQL over the view `samples`, e.g. "SELECT count(*) FROM samples".')
    ] = None,
    where: Annotated[
        str | None, typer.Option("--where", help='Filter instead of full SQL, e.g. "au_occ(12) = 1".')
    ] = None,
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to print.")] = 20,
) -> None:
    """Query a built dataset's labels with SQL (DuckDB over the Parquet manifests)."""
    from manifests.query import query as run_query

    try:
        table = run_query(run_dir, sql=sql, where=where, include_rejected=include_rejected)
    except Exception as exc:  # DuckDB and IO errors carry the useful message
        _fail(f"query failed: {exc}", code=2)
    shown = Table(show_lines=False)
    for name in table.column_names:
        shown.add_column(name, overflow="ellipsis", max_width=40)
    for row in table.slice(0, limit).to_pylist():
        shown.add_row(*(_cell(v) for v in row.values()))
    out.print(shown)
    out.print(f"{table.num_rows} rows")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


@app.command()
def export(
    run_dir: RunArg,
    dest: Annotated[Path, typer.Argument(help="Output directory for the subset.")],
    where: Annotated[str | None, typer.Option("--where", help="SQL filter over `samples`.")] = None,
    limit: Annotated[int | None, typer.Option("--limit")] = None,
    fmt: Annotated[str, typer.Option("--format", help="webdataset or folder.")] = "webdataset",
    shard_size: Annotated[int, typer.Option("--shard-size")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Export a filtered subset as new WebDataset shards or a folder of images + labels.csv."""
    from manifests.export import export as run_export

    try:
        result = run_export(
            run_dir, dest, where=where, limit=limit, format=fmt, shard_size=shard_size, overwrite=overwrite
        )
    except (ValueError, FileExistsError, OSError) as exc:
        _fail(str(exc), code=2)
    out.print_json(json.dumps(result, default=str))


@app.command("eval")
def evaluate(
    run_dir: RunArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to save CSV/JSON (default: RUN/eval).")] = None,
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
) -> None:
    """Label fidelity: per-AU F1 of each detector and the consensus, intensity ICC(3,1) and MAE."""
    from factory.evaluate import evaluate as run_eval
    from factory.evaluate import print_report

    report = run_eval(run_dir, out_dir=out_dir or run_dir / "eval", include_rejected=include_rejected)
    print_report(report, console=out)


@app.command()
def calibrate(
    recipe: RecipeArg,
    fit_shards: Annotated[str, typer.Option("--fit-shards", help="Shards to fit on, e.g. 0-5.")] = "0-2",
    test_shards: Annotated[str, typer.Option("--test-shards", help="Held-out shards, e.g. 6-7.")] = "3",
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for geometric.json, appearance.json, calibration.md.")
    ] = Path("calibration"),
    seed: SeedOpt = None,
    shard_size: Annotated[int | None, typer.Option("--shard-size", help="Overrides dataset.shard_size.")] = None,
) -> None:
    """Refit the offline AU detectors' calibration on exact warp renders; score it on held-out shards."""
    from factory.calibrate import CalibrationError, calibrate_offline_detectors, parse_shards
    from factory.identities import IdentityBankError
    from stages.base import StageError

    r = _load(recipe, seed=seed, shard_size=shard_size)
    try:
        report = calibrate_offline_detectors(
            r,
            fit_shards=parse_shards(fit_shards),
            test_shards=parse_shards(test_shards),
            out_dir=out_dir,
            log=lambda line: err.print(line, highlight=False),
        )
    except (CalibrationError, IdentityBankError) as exc:
        _fail(str(exc), code=2)
    except StageError as exc:
        _fail(str(exc))
    out.print(report.to_markdown(), highlight=False)


@app.command("train-realism")
def train_realism(
    real: Annotated[Path, typer.Option("--real", help="Folder of real face images.")],
    fake: Annotated[Path, typer.Option("--fake", help="Folder of generated face images.")],
    out_path: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")] = Path("realism.pt"),
    arch: Annotated[str, typer.Option("--arch", help="resnet18 or resnet50.")] = "resnet18",
    epochs: Annotated[int, typer.Option("--epochs")] = 5,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Held-out share for accuracy.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    pretrained: Annotated[
        Path | None, typer.Option("--pretrained", help="torchvision ResNet weights to start from.")
    ] = None,
    input_size: Annotated[int, typer.Option("--input-size")] = 224,
) -> None:
    """Train the learned realism discriminator (GPU if present, CPU otherwise); reports held-out accuracy."""
    from factory.realism_train import TrainError
    from factory.realism_train import train_realism as run_train

    try:
        report = run_train(real, fake, out_path, arch=arch, epochs=epochs, val_fraction=val_fraction, seed=seed,
                           pretrained=pretrained, input_size=input_size)
    except TrainError as exc:
        _fail(str(exc), code=2)
    out.print_json(json.dumps(report.to_dict(), default=str))


@identities_app.command("index")
def identities_index(
    bank_dir: Annotated[Path, typer.Argument(help="Bank folder with identities.csv and images.")],
    embedder: Annotated[str, typer.Option("--embedder", help="dlib (offline) or arcface.")] = "dlib",
    arcface_onnx: Annotated[
        Path | None, typer.Option("--arcface-onnx", help="ArcFace ONNX file for --embedder arcface.")
    ] = None,
) -> None:
    """Detect, align and embed every identity once; cache embeddings in the bank folder."""
    from factory.identity_index import BankIndexError, index_bank

    try:
        report = index_bank(bank_dir, embedder=embedder, arcface_onnx=arcface_onnx)
    except BankIndexError as exc:
        _fail(str(exc), code=2)
    out.print(report.summary())
    if report.failed:
        _fail(
            f"{len(report.failed)} identit{'y' if len(report.failed) == 1 else 'ies'} unusable (listed above); "
            "fix or remove them from identities.csv"
        )


@models_app.command("list")
def models_list() -> None:
    """Official weights the factory can use, with licences and where they come from."""
    from factory.models import catalogue

    table = Table()
    for col in ("name", "licence", "file", "source"):
        table.add_column(col)
    for entry in catalogue():
        table.add_row(entry.name, entry.licence, entry.filename, entry.url)
    out.print(table)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A name from `factory models list`.")],
    dest: Annotated[
        Path | None, typer.Option("--dest", help="Folder for the weights (default: $MIFA_MODELS_DIR or ~/.cache).")
    ] = None,
) -> None:
    """Download official weights with checksums, or say what to fetch by hand when offline."""
    from factory.models import pull

    try:
        path = pull(name, dest)
    except (OSError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    out.print(f"saved {path}")


if __name__ == "__main__":
    app()

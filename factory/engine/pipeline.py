"""A recipe's stages, in process: make the context, build the stages, run them on a batch.

The one local executor of the factory. The shard worker runs it on every batch of a shard;
``factory calibrate``, ``factory doctor`` and the benchmarks build it the same way, so
"doctor loads the stages as a worker would" holds by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from factory.recipe import Recipe
from manifests.bank import open_bank
from manifests.store import location
from stages.base import StageContext
from stages.pipeline import Pipeline, StageTimings

__all__ = ["Pipeline", "StageTimings", "make_context", "recipe_pipeline"]


def make_context(recipe: Recipe, run_dir: Path, device: str = "cpu") -> StageContext:
    """What a stage of this recipe may know: run directory, device, seed, bank, image size."""
    return StageContext(
        run_dir=location(run_dir),  # a stage's caches go to the node's disk (stages.prompt.cache)
        device=device,
        seed=recipe.dataset.seed,
        identity_bank=open_bank(recipe.identities.bank),
        image_size=recipe.output.image_size,
    )


def recipe_pipeline(recipe: Recipe, context: StageContext, paths: Iterable[str] | None = None) -> Pipeline:
    """The recipe's stages at ``paths`` (default: all it runs), built and set up, in pipeline order."""
    return Pipeline.build(recipe.stage_specs(paths), context)

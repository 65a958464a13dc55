"""The recipe: one TOML file, validated once, here, by typed models.

Everything downstream receives a :class:`Recipe` (frozen) and never re-validates. A bad
recipe raises :class:`RecipeError` whose message names the field, the bad value and what
is allowed; the CLI prints it and exits with code 2 before anything is written. That
includes the stage chain's data flow (``stages.pipeline.Pipeline.check``): a stage reading a
record field no earlier stage writes, or declaring a field ``manifests.schema`` does not
know, is a recipe error naming the stage and the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
    model_validator,
)

from factory.sections import (
    IDENTITY_BANK,
    AUSection,
    BalanceSection,
    BankSection,
    DatasetSection,
    DemographicsSection,
    EmotionSection,
    EngineSection,
    IdentitySection,
    OutputSection,
    StageSection,
    _Model,
)
from manifests.errors import UserError
from manifests.store import is_url
from stages import stage_class
from stages.base import StageConfig, StageError
from stages.pipeline import ChainError, Pipeline, StageSpec, path_kind

__all__ = [
    "BANK_FILTERS",
    "IDENTITY_BANK",
    "Recipe",
    "RecipeError",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
]


SKIP = "none"  # stage name that switches an optional stage off


class RecipeError(UserError, ValueError):
    """A recipe that cannot be used. ``str()`` is the one message to show the user."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Recipe(_Model):
    dataset: DatasetSection = DatasetSection()
    aus: AUSection = AUSection()
    emotions: EmotionSection = EmotionSection()
    demographics: DemographicsSection = DemographicsSection()
    identities: IdentitySection = IdentitySection()
    bank: BankSection = BankSection()
    prompt: StageSection = StageSection(name="prompt")
    generator: StageSection = StageSection(name="warp")
    face: StageSection = StageSection(name="dlib")
    detectors: tuple[StageSection, ...] = (StageSection(name="geometric"),)
    agreement: StageSection = StageSection(name="agreement")
    realism: StageSection = StageSection(name="heuristic-realism")
    filters: StageSection = StageSection(name="filters")
    output: OutputSection = OutputSection()
    engine: EngineSection = EngineSection()
    balance: BalanceSection = BalanceSection()

    @model_validator(mode="after")
    def _detector_names_unique(self) -> Recipe:
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detectors: each detector may appear once, got {names}")
        return self

    @model_validator(mode="after")
    def _balance_of_samples(self) -> Recipe:
        if self.balance.enabled and self.dataset.kind == IDENTITY_BANK:
            raise ValueError(
                "balance.enabled: an identity bank keeps one neutral portrait per identity, there is no "
                "AU or emotion balance to select; set [balance] enabled = false"
            )
        return self

    @model_validator(mode="after")
    def _required_stages(self) -> Recipe:
        for path in ("prompt", "generator"):
            if getattr(self, path).name == SKIP:
                raise ValueError(
                    f"{path}: this stage is required; '{SKIP}' is only allowed for face, agreement, realism and filters"
                )
        return self

    def stage_sections(self) -> dict[str, StageSection]:
        """Recipe path -> section for every stage the recipe runs, in pipeline order.

        ``name = "none"`` switches off face, agreement, realism or filters.
        """
        out = {"prompt": self.prompt, "generator": self.generator, "face": self.face}
        out.update({f"detectors[{i}]": d for i, d in enumerate(self.detectors)})
        out.update(agreement=self.agreement, realism=self.realism, filters=self.filters)
        return {path: sec for path, sec in out.items() if sec.name != SKIP}

    def stage_specs(self, paths: Iterable[str] | None = None) -> list[StageSpec]:
        """The specs of the stages at ``paths`` (default: all), in pipeline order."""
        sections = self.stage_sections()
        wanted = list(sections) if paths is None else [p for p in sections if p in set(paths)]
        return [StageSpec(path, sections[path].name, sections[path].options()) for path in wanted]

    def stage_config(self, path: str) -> StageConfig:
        """The validated options of the stage at recipe ``path`` (e.g. ``generator``)."""
        section = self.stage_sections()[path]
        return stage_class(section.name).config_model(**section.options())

    def fingerprint(self) -> str:
        """Stable hash of the full recipe; a resume with another fingerprint is refused."""
        # An untouched [balance] section is left out, so recipes (and runs) from before it
        # existed keep their fingerprint and resume.
        exclude = {"balance"} if self.balance == BalanceSection() else None
        blob = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a recipe value may be a whole file)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for item in loc:
        try:
            data = data[item]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _first_error(exc: ValidationError, data: dict[str, Any], source: str, section: str = "") -> RecipeError:
    """The first problem, one line; ``section`` is where ``data`` sits in the recipe (a stage's
    options are validated apart: ``generator``), so a field is named by its full path."""
    err = exc.errors()[0]
    inner = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    loc = (section, *inner) if section else inner
    field = _location(loc)
    more = len(exc.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
    if err["type"] == "extra_forbidden":
        parent = _location(loc[:-1]) or "the top level"
        msg = f"{source}: unknown field '{field}' in {parent}; check the spelling{tail}"
    else:
        value = _lookup(data, inner)
        got = "missing" if err["type"] == "missing" else f"got {_short(value)}"
        if loc == ("dataset", "out") and is_url(value):
            got = "got a URL (not repeated: it may hold a secret)"
        reason = str(err["msg"]).removeprefix("Value error, ")
        msg = f"{source}: field '{field}': {got}; {reason}{tail}"
    return RecipeError(msg, field=field)


def _validate_stage_options(recipe: Recipe, source: str) -> None:
    for path, section in recipe.stage_sections().items():
        try:
            cls = stage_class(section.name)
        except StageError as exc:
            raise RecipeError(f"{source}: field '{path}.name': {exc}", field=f"{path}.name") from exc
        except Exception as exc:  # a malformed plugin path, or the user's module failed to import
            raise RecipeError(
                f"{source}: field '{path}.name': cannot load stage {_short(section.name)} "
                f"({type(exc).__name__}: {exc}); use a registered name or 'package.module:Class'",
                field=f"{path}.name",
            ) from exc
        want = path_kind(path)
        if getattr(cls, "kind", want) != want:
            raise RecipeError(
                f"{source}: field '{path}.name': stage {section.name!r} is a {cls.kind} stage, "
                f"but '{path.split('[')[0]}' needs a {want} stage",
                field=f"{path}.name",
            )
        try:
            cls.config_model(**section.options())
        except ValidationError as exc:
            raise _first_error(exc, section.options(), source, section=path) from exc


def _check_chain(recipe: Recipe, source: str) -> None:
    try:
        Pipeline.check(recipe.stage_specs())
    except ChainError as exc:
        raise RecipeError(f"{source}: {exc}", field=exc.path) from exc


# An identity-bank build plans one neutral portrait per identity and needs a stage that
# embeds each kept face for the bank-wide deduplication.
BANK_FILTERS = "portrait-filters"


def _validate_identity_bank(recipe: Recipe, source: str) -> None:
    """The fields an identity-bank build fixes or needs (``dataset.kind``), checked at the edge.

    Sections are compared with their defaults, not looked up in the TOML: a recipe recorded in
    run.json (``factory retry``, provenance) spells every section out with its defaults."""
    if recipe.dataset.kind != IDENTITY_BANK:
        if recipe.bank != BankSection():
            raise RecipeError(f"{source}: section [bank] applies only to dataset.kind = '{IDENTITY_BANK}'", "bank")
        return
    problems = [
        ("identities.bank", recipe.identities.bank != "none", "must be 'none': a bank build invents its identities"),
        ("aus", recipe.aus != AUSection(), "remove it: every identity is planned neutral (all AUs 0)"),
        ("emotions", recipe.emotions != EmotionSection(), "remove it: every identity is planned 'neutral'"),
        (
            "filters.name",
            recipe.filters.name != BANK_FILTERS and ":" not in recipe.filters.name,
            f"must be '{BANK_FILTERS}' (one face, pose, size, sharpness, neutral, realism, identity embedding)",
        ),
        ("bank.licence", not recipe.bank.licence.strip(), "name the generating model's licence (identities.csv)"),
    ]
    for field, bad, rule in problems:
        if bad:
            raise RecipeError(f"{source}: field '{field}': dataset.kind = '{IDENTITY_BANK}' {rule}", field)


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate ``data`` (a parsed TOML document) into a :class:`Recipe`."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, data, source) from exc
    _validate_stage_options(recipe, source)
    _validate_identity_bank(recipe, source)
    _check_chain(recipe, source)
    return recipe


def apply_overrides(data: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Return a copy of ``data`` with CLI flags applied (``None`` means "not given")."""
    paths = {
        "target": ("dataset", "target"),
        "seed": ("dataset", "seed"),
        "out": ("dataset", "out"),
        "gpus": ("engine", "gpus"),
        "address": ("engine", "address"),
        "shard_size": ("dataset", "shard_size"),
    }
    merged = copy.deepcopy(data)
    for flag, value in overrides.items():
        if value is None:
            continue
        section, key = paths[flag]
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise RecipeError(
                f"field '{section}': got {_short(table)}; must be a table ([{section}]) to take --{flag}",
                field=section,
            )
        table[key] = value
    return merged


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a recipe file; a missing, unreadable, binary or malformed file is
    one RecipeError naming the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RecipeError(
            f"recipe file {str(p)!r} does not exist; pass a TOML file such as recipes/demo.toml"
        ) from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL in the path, ...
        reason = getattr(exc, "strerror", None) or exc
        raise RecipeError(
            f"cannot read recipe file {str(p)!r} ({reason}); pass a TOML file such as recipes/demo.toml"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{p}: not a text file (byte {exc.start} is not UTF-8); a recipe is a UTF-8 TOML file "
            "such as recipes/demo.toml"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{p}: not valid TOML ({exc}); fix the syntax at that line") from None


# What a recipe file must hold at least: a [dataset] table (its name, target and out may be
# defaults); an empty file would otherwise plan 1000 samples into runs/mifa unasked.
REQUIRED_SECTIONS = ("dataset",)


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read, override and validate a recipe file; a file without ``REQUIRED_SECTIONS`` is
    refused once its fields are otherwise valid (their errors name a field, this the file)."""
    data = read_recipe_file(path)
    recipe = recipe_from_dict(apply_overrides(data, **overrides), source=str(path))
    for section in REQUIRED_SECTIONS:
        if section not in data:
            raise RecipeError(
                f"{path}: no [{section}] table; a recipe needs at least [{section}] (its target and out "
                "may be left to the defaults; copy recipes/demo.toml)",
                field=section,
            )
    return recipe

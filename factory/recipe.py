"""The recipe: one TOML file, validated once, here, by typed models.

Everything downstream receives a :class:`Recipe` (frozen) and never re-validates. A bad
recipe raises :class:`RecipeError` whose message names the field, the bad value and what
is allowed; the CLI prints it and exits with code 2 before anything is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from manifests.vocab import AGE_BANDS, DISFA_AUS, EMOTION_MIX_KEYS, EMOTIONS, ETHNICITIES, GENDERS
from stages import stage_class
from stages.base import StageConfig, StageError
from stages.pipeline import StageSpec, path_kind

__all__ = [
    "Recipe",
    "RecipeError",
    "StageSection",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
]


SKIP = "none"  # stage name that switches an optional stage off


class RecipeError(ValueError):
    """A recipe that cannot be used. ``str()`` is the one message to show the user."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSection(_Model):
    name: str = Field("mifa", pattern=r"^[a-z0-9][a-z0-9_]*$", max_length=40)
    target: int = Field(1000, ge=1, le=100_000_000, description="accepted samples to build")
    shard_size: int = Field(1000, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    out: str = "runs/mifa"


class AUSection(_Model):
    units: tuple[int, ...] = DISFA_AUS
    active_share: float = Field(0.3, gt=0.0, lt=1.0, description="share of samples with each AU active")
    # AU25 is implied by AU26 (see factory.plan.CONSTRAINTS), so it needs a larger share.
    share_overrides: dict[str, float] = Field(default_factory=lambda: {"AU25": 0.45})
    intensity_weights: tuple[float, ...] = (1, 1, 1, 1, 1)
    intensity_scale: tuple[int, ...] = (0, 5)

    @field_validator("units")
    @classmethod
    def _units_in_disfa(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [u for u in v if u not in DISFA_AUS]
        if bad:
            raise ValueError(f"AU {bad[0]} is not labelled by MIFA; allowed: {list(DISFA_AUS)}")
        if len(set(v)) != len(v) or not v:
            raise ValueError("must list each AU once and not be empty")
        return v

    @field_validator("share_overrides")
    @classmethod
    def _override_keys(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = [f"AU{a}" for a in DISFA_AUS]
        for key, share in v.items():
            if key not in allowed:
                raise ValueError(f"unknown AU key {key!r}; allowed: {allowed}")
            if not 0.0 < share < 1.0:
                raise ValueError(f"{key} share {share} must be between 0 and 1 (exclusive)")
        return v

    @field_validator("intensity_weights")
    @classmethod
    def _weights_positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != 5 or any(w < 0 for w in v) or sum(v) <= 0:
            raise ValueError("needs 5 weights (for intensities 1-5), each >= 0, with a positive sum")
        return v

    @field_validator("intensity_scale")
    @classmethod
    def _scale_is_disfa(cls, v: tuple[int, int]) -> tuple[int, int]:
        if tuple(v) != (0, 5):
            raise ValueError("MIFA labels intensity on the DISFA scale; allowed: [0, 5]")
        return v

    def share(self, au: int) -> float:
        return self.share_overrides.get(f"AU{au}", self.active_share)


def _weights(keys: tuple[str, ...], name: str):
    """Validator for a {category: weight} table over a fixed vocabulary."""

    def check(v: dict[str, float]) -> dict[str, float]:
        for key, w in v.items():
            if key not in keys:
                raise ValueError(f"unknown {name} {key!r}; allowed: {list(keys)}")
            if w < 0:
                raise ValueError(f"weight for {key!r} is {w}; weights must be >= 0")
        if sum(v.values()) <= 0:
            raise ValueError("weights must have a positive sum")
        return v

    return check


def _uniform(keys: tuple[str, ...]) -> dict[str, float]:
    return {k: 1.0 for k in keys}


class DemographicsSection(_Model):
    ethnicity: dict[str, float] = Field(default_factory=lambda: _uniform(ETHNICITIES))
    age_band: dict[str, float] = Field(default_factory=lambda: _uniform(AGE_BANDS))
    gender: dict[str, float] = Field(default_factory=lambda: _uniform(GENDERS))

    _eth = field_validator("ethnicity")(_weights(ETHNICITIES, "ethnic group"))
    _age = field_validator("age_band")(_weights(AGE_BANDS, "age band"))
    _gen = field_validator("gender")(_weights(GENDERS, "gender"))


_DEFAULT_EMOTIONS = {**{e: 0.08 for e in EMOTIONS}, "neutral": 0.04, "mixed": 0.40}


class EmotionSection(_Model):
    mix: dict[str, float] = Field(default_factory=lambda: dict(_DEFAULT_EMOTIONS))

    _mix = field_validator("mix")(_weights(EMOTION_MIX_KEYS, "emotion"))


class IdentitySection(_Model):
    bank: str = Field("builtin", description="'builtin', 'none', or a folder with identities.csv")


class StageSection(_Model):
    """``name`` picks a registered stage; the other keys are that stage's options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OutputSection(_Model):
    image_format: Literal["jpg", "webp", "png"] = "jpg"
    image_quality: int = Field(95, ge=1, le=100)
    image_size: int = Field(512, ge=32, le=2048)
    keep_rejected_images: bool = False


class EngineSection(_Model):
    """How the build runs; every field may change between a build and its resume."""

    gpus: int = Field(0, ge=0, le=4096, description="GPU actors; 0 runs one CPU actor per worker")
    cpu_workers: int = Field(1, ge=1, le=4096, description="actors when gpus = 0")
    batch_size: int = Field(8, ge=1, le=1024)
    inflight_per_actor: int = Field(2, ge=1, le=16)
    max_retries: int = Field(2, ge=0, le=100)
    min_acceptance_rate: float = Field(0.01, ge=0.0, le=1.0)
    rate_check_after_shards: int = Field(3, ge=1)
    expected_acceptance_rate: float = Field(0.5, gt=0.0, le=1.0)
    address: str | None = None
    # failures that stop (factory.engine.scheduler): the same error or failures for good on this
    # many shards before any succeeds; a failed share above max_failed_share after
    # failure_check_after_shards finished shards; never more than max_shards (default: what the target can need)
    fail_fast_shards: int = Field(3, ge=1, le=100_000)
    max_failed_share: float = Field(0.1, ge=0.0, le=1.0)
    failure_check_after_shards: int = Field(20, ge=1, le=1_000_000)
    max_shards: int | None = Field(None, ge=1, le=100_000_000)
    # stragglers (factory.engine.runner): a shard with no micro-batch done for shard_timeout_s is
    # cancelled and retried; with backups, a shard running backup_after x the median shard time
    # gets a copy on an idle worker (the first commit wins)
    shard_timeout_s: float = Field(1800.0, gt=0.0, le=7 * 86400.0)
    backups: bool = True
    backup_after: float = Field(1.5, ge=0.0, le=1000.0)


class Recipe(_Model):
    dataset: DatasetSection = DatasetSection()
    aus: AUSection = AUSection()
    emotions: EmotionSection = EmotionSection()
    demographics: DemographicsSection = DemographicsSection()
    identities: IdentitySection = IdentitySection()
    prompt: StageSection = StageSection(name="prompt")
    generator: StageSection = StageSection(name="warp")
    face: StageSection = StageSection(name="dlib")
    detectors: tuple[StageSection, ...] = (StageSection(name="geometric"),)
    agreement: StageSection = StageSection(name="agreement")
    realism: StageSection = StageSection(name="heuristic-realism")
    filters: StageSection = StageSection(name="filters")
    output: OutputSection = OutputSection()
    engine: EngineSection = EngineSection()

    @model_validator(mode="after")
    def _detector_names_unique(self) -> Recipe:
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detectors: each detector may appear once, got {names}")
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
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
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


def _first_error(exc: ValidationError, data: dict[str, Any], source: str) -> RecipeError:
    err = exc.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    field = _location(loc)
    more = len(exc.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
    if err["type"] == "extra_forbidden":
        parent = _location(loc[:-1]) or "the top level"
        msg = f"{source}: unknown field '{field}' in {parent}; check the spelling{tail}"
    else:
        value = _lookup(data, loc)
        got = "missing" if err["type"] == "missing" else f"got {_short(value)}"
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
            sub = _first_error(exc, section.options(), source)
            field = f"{path}.{sub.field}"
            raise RecipeError(str(sub).replace(f"'{sub.field}'", f"'{field}'", 1), field=field) from exc


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate ``data`` (a parsed TOML document) into a :class:`Recipe`."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, data, source) from exc
    _validate_stage_options(recipe, source)
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


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read, override and validate a recipe file."""
    data = apply_overrides(read_recipe_file(path), **overrides)
    return recipe_from_dict(data, source=str(path))

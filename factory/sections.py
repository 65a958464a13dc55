"""The recipe's sections: one typed model per TOML table, each refusing unknown keys.

``factory.recipe.Recipe`` assembles them and validates the recipe as a whole (stage options,
identity-bank rules); everything downstream reads these frozen models and never re-validates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from manifests.store import check_url, is_url
from manifests.vocab import AGE_BANDS, DISFA_AUS, EMOTION_MIX_KEYS, EMOTIONS, ETHNICITIES, GENDERS

__all__ = [
    "IDENTITY_BANK",
    "AUSection",
    "BalanceSection",
    "BankSection",
    "DatasetKind",
    "DatasetSection",
    "DemographicsSection",
    "EmotionSection",
    "EngineSection",
    "IdentitySection",
    "OutputSection",
    "StageSection",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DatasetKind = Literal["samples", "identity-bank"]
IDENTITY_BANK: DatasetKind = "identity-bank"


class DatasetSection(_Model):
    name: str = Field("mifa", pattern=r"^[a-z0-9][a-z0-9_]*$", max_length=40)
    kind: DatasetKind = Field(
        "samples", description="samples: AU-labelled expressions; identity-bank: one neutral portrait per identity"
    )
    target: int = Field(1000, ge=1, le=100_000_000, description="accepted samples (kept identities) to build")
    shard_size: int = Field(1000, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    out: str = Field(
        "runs/mifa", description="a folder, or object storage: s3://bucket/prefix (credentials from the environment)"
    )

    @field_validator("out")
    @classmethod
    def _out_url(cls, value: str) -> str:
        """A URL must be usable and hold no credentials (run.json records it); an empty path
        would be the current folder, never what was meant."""
        if not value.strip():
            raise ValueError("must name a folder or s3://bucket/prefix, not an empty path")
        return check_url(value) if is_url(value) else value


class AUSection(_Model):
    units: tuple[int, ...] = DISFA_AUS
    active_share: float = Field(0.3, gt=0.0, lt=1.0, description="share of samples with each AU active")
    # AU25 is implied by AU26 (see factory.expressions.CONSTRAINTS), so it needs a larger share.
    share_overrides: dict[str, float] = Field(default_factory=lambda: {"AU25": 0.45})
    intensity_weights: tuple[float, ...] = (1, 1, 1, 1, 1)

    @model_validator(mode="before")
    @classmethod
    def _retired_intensity_scale(cls, data: Any) -> Any:
        """Recipes recorded before ``intensity_scale`` was removed hold its one legal value,
        [0, 5] (the DISFA scale); they still load. Any other value is an unknown key."""
        if isinstance(data, dict) and list(data.get("intensity_scale", ())) == [0, 5]:
            return {k: v for k, v in data.items() if k != "intensity_scale"}
        return data

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


class BalanceSection(_Model):
    """Delivered-balance targets: the shares of the *accepted* samples the index holds.

    With ``enabled = false`` (the default) the build is open loop: every accepted sample of the
    indexed shards is indexed, exactly as before this section existed. With ``enabled = true``
    the index keeps, in shard order, only the accepted samples that keep every share within its
    tolerance of the recipe's target (``factory.engine.balance``); the rest is surplus, kept on
    disk and recorded with ``dropped_by = "balance"``.
    """

    enabled: bool = Field(False, description="select the indexed samples to meet the shares below")
    au_share_tolerance: float = Field(0.02, gt=0.0, le=0.5, description="each AU's active share, absolute")
    intensity_share_tolerance: float = Field(
        0.03, gt=0.0, le=0.5, description="each intensity level's share of an AU's active samples"
    )
    emotion_tolerance: float = Field(0.01, gt=0.0, le=0.5, description="each emotion's share, absolute")
    demographic_tolerance: float = Field(
        0.01, gt=0.0, le=0.5, description="each ethnic group's, age band's and gender's share, absolute"
    )
    max_generated_per_accepted: float = Field(
        3.0,
        ge=1.0,
        le=1000.0,
        description="waste bound: past this many planned samples per target sample, cells still short "
        "are infeasible; past twice as many, later shards are indexed open loop",
    )
    infeasible_after: int = Field(
        50, ge=1, le=1_000_000, description="planned samples of a cell before its yield is judged"
    )
    infeasible_yield: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="a cell whose yield (delivered per planned) is below this with 95 % confidence is "
        "infeasible, no longer chased (0.02: past 50 generated per delivered; 0: only a cell never accepted)",
    )
    round_shards: int = Field(
        16,
        ge=0,
        le=100_000,
        description="closed loop: shards per planning round, each round after the first planned from the "
        "yields measured on the committed shards; 0 plans every shard as the open loop does (selection only)",
    )
    round_lag_shards: int = Field(
        8,
        ge=0,
        le=100_000,
        description="round k+1 is planned once all but this many of round k's shards are committed; the "
        "workers take those meanwhile (never idle when it is at least the number of workers)",
    )

    @model_validator(mode="after")
    def _lag_inside_a_round(self) -> BalanceSection:
        if self.round_shards and self.round_lag_shards >= self.round_shards:
            raise ValueError(
                f"round_lag_shards ({self.round_lag_shards}) must be below round_shards ({self.round_shards}): "
                "a round is planned from shards of the round before it"
            )
        return self


class IdentitySection(_Model):
    bank: str = Field("builtin", description="'builtin', 'none', or a folder with identities.csv")
    expressions_per_identity: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="None: each sample draws a bank identity of its demographic cell; N: the bank's "
        "identities in id order, each planned N times in a row (a multi-identity dataset; the "
        "demographics are then the bank's)",
    )
    bank_recipe: str | None = Field(
        None,
        description="the recipe that builds the bank (the chain's first step: an identity-bank build, then "
        "`factory export --format identity-bank`); `factory plan --estimate` prices both steps",
    )


class BankSection(_Model):
    """Options of an identity-bank build (``dataset.kind = "identity-bank"``)."""

    dedup_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="cosine of two identity embeddings at or above which they are one person; "
        "default by the portrait filter's embedder (dlib 0.9, arcface 0.5)",
    )
    licence: str = Field("", description="licence of the generating model, written into identities.csv")
    source: str = Field("", description="the generating model, for identities.csv; default: the generator section")


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
    # failures that stop (factory.engine.rules): the same error or failures for good on this
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

"""The prompt stage: planned AU vector + emotion (+ demographics) -> checked description.

``backend = "grammar"`` (default) uses the embedded grammar, no network. ``backend =
"llm"`` asks an OpenAI-compatible endpoint and falls back to the grammar (or drops the
sample, ``on_failure = "drop"``) when the server fails or its text does not read back.

Every description, from either backend, is read back before use
(:func:`stages.prompt.readback.check_description`); the record gets ``description``,
``prompt_backend`` (``grammar`` | ``llm`` | ``grammar-fallback``), ``prompt_version``,
``prompt_jaccard`` and ``prompt_intensity_agreement``; a fallback also gets
``prompt_note`` with the reason the LLM text was not used.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlparse

from pydantic import Field

from manifests.vocab import EMOTION_MIX_KEYS
from stages.base import Kind, ModelFilesError, Record, Stage, StageConfig, StageContext, StageError, drop
from stages.prompt.cache import cache_file
from stages.prompt.grammar import GRAMMAR_VERSION, describe, validate_intensity
from stages.prompt.readback import check_description, mismatch_report

__all__ = ["GRAMMAR_VARIANTS", "LOCAL_HOSTS", "PromptConfig", "PromptStage"]

# Grammar texts tried per sample before giving up on read-back (the grammar reads back
# exactly in tests; this only guards against a vocabulary regression).
GRAMMAR_VARIANTS = 4
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class PromptConfig(StageConfig):
    backend: Literal["grammar", "llm"] = "grammar"
    # grammar
    mention_inactive: float = Field(0.35, ge=0.0, le=1.0, description="chance to mention some inactive AUs")
    facs_share: float = Field(0.15, ge=0.0, le=1.0, description="chance an AU is named by FACS name + code")
    include_demographics: bool = True
    # read-back acceptance (every backend)
    min_jaccard: float = Field(1.0, ge=0.0, le=1.0)
    min_intensity_agreement: float = Field(0.0, ge=0.0, le=1.0)
    # llm
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the variable holding the key")
    concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    max_retries: int = Field(3, ge=0, le=20, description="extra attempts per request on 429/5xx/timeout")
    retry_backoff_s: float = Field(1.0, ge=0.0, le=600.0)
    max_feedback_rounds: int = Field(2, ge=0, le=10)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    # send the sample seed (own text per sample); false: identical plans share one cached reply
    vary_by_seed: bool = True
    # the batch stops calling the server after give_up_after x (max_retries + 1) failed requests in a row
    give_up_after: int = Field(3, ge=1, le=10_000)
    on_failure: Literal["grammar", "drop"] = "grammar"


class PromptStage(Stage[PromptConfig]):
    name: ClassVar[str] = "prompt"
    licence = "Apache-2.0 (this code: the grammar backend uses no model)"
    kind: ClassVar[Kind] = "prompt"
    reads = frozenset({"planned_intensity", "emotion", "seed"})
    optional_reads = frozenset({"ethnicity", "age_band", "gender"})  # include_demographics
    writes = frozenset(
        {
            "description",
            "prompt_backend",
            "prompt_version",
            "prompt_jaccard",
            "prompt_intensity_agreement",
            "prompt_note",
        }
    )

    def __init__(self, config: PromptConfig, context: StageContext) -> None:
        super().__init__(config, context)
        # Requests sent / cache hits of the last LLM batch (for logs and tests).
        self.last_stats: dict[str, int] = {}
        # Problems found at setup that do not stop the build (the engine shows them once).
        self.warnings: list[str] = []

    def licence_notice(self) -> str:
        if self.config.backend == "grammar":
            return self.licence
        return (
            f"Apache-2.0 (this code); descriptions written by the LLM {self.config.model!r} at "
            f"{self.config.base_url}: that model's licence applies to them (not checked here)"
        )

    def preflight(self) -> None:
        """With ``on_failure = "drop"`` an unreachable endpoint would drop every sample: the
        build refuses it before Ray starts (with the grammar fallback, setup() warns)."""
        if self.config.backend != "llm" or self.config.on_failure != "drop":
            return
        if importlib.util.find_spec("openai") is None:
            raise ModelFilesError(
                "prompt backend 'llm' needs the Python package 'openai'", fix="pip install 'mifa-factory[llm]'"
            )
        try:
            self._probe(self._api_key())
        except StageError as exc:
            raise ModelFilesError(str(exc)) from None

    def setup(self) -> None:
        if self.config.backend != "llm":
            return
        try:
            import openai  # noqa: F401  # deferred: optional (the llm extra); a missing package fails here, early
        except ModuleNotFoundError as exc:
            raise StageError(
                "prompt backend 'llm' needs the Python package 'openai'; install it with: "
                "pip install 'mifa-factory[llm]'"
            ) from exc
        key = self._api_key()  # fail early on a missing key
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self._probe(key)

    def _probe(self, key: str) -> None:
        """One request at start: with ``on_failure = "drop"`` a dead endpoint would drop every
        sample of every shard, so it fails here, before any shard; with the grammar fallback
        it is a warning."""
        from stages.prompt.probe import probe_endpoint  # deferred: brings openai; the grammar backend needs none

        problem = probe_endpoint(self.config.base_url, key, min(self.config.timeout_s, 10.0))
        if problem is None:
            return
        if self.config.on_failure == "drop":
            raise StageError(
                f"{problem}; with prompt.on_failure = 'drop' every sample would be dropped. Start the server, "
                "fix prompt.base_url (or the key), or set prompt.on_failure = 'grammar' to fall back to the grammar"
            )
        self.warnings.append(f"{problem}; descriptions fall back to the grammar (prompt.on_failure = 'grammar')")

    @property
    def cache_path(self) -> Path:
        return cache_file(self.context.run_dir)

    def _api_key(self) -> str:
        key = os.environ.get(self.config.api_key_env)
        if key:
            return key
        host = urlparse(self.config.base_url).hostname or ""
        if host in LOCAL_HOSTS:
            return "unused-local-key"  # local servers (vLLM, llama.cpp) accept any key
        raise StageError(
            f"the LLM endpoint {self.config.base_url} needs an API key, but the environment variable "
            f"{self.config.api_key_env!r} is not set; export it, or point prompt.api_key_env at the "
            "variable that holds the key"
        )

    # -- per record ---------------------------------------------------------------------

    def _grammar(self, record: Record, levels: list[int]) -> tuple[str, float, float] | str:
        """(text, jaccard, agreement) of the first grammar variant that reads back, else why not."""
        demo = self.config.include_demographics
        last = ""
        for variant in range(GRAMMAR_VARIANTS):
            text = describe(
                levels,
                record["emotion"],
                seed=int(record["seed"]),
                ethnicity=record.get("ethnicity") if demo else None,
                age_band=record.get("age_band") if demo else None,
                gender=record.get("gender") if demo else None,
                mention_inactive=self.config.mention_inactive,
                facs_share=self.config.facs_share,
                variant=variant,
            ).text
            jac, agree = check_description(text, levels)
            if jac >= self.config.min_jaccard and agree >= self.config.min_intensity_agreement:
                return text, jac, agree
            last = mismatch_report(text, levels)
        return f"grammar description failed read-back in {GRAMMAR_VARIANTS} variants: {last}"

    def _fill(self, record: Record, text: str, backend: str, version: str, jac: float, agree: float) -> None:
        record.update(
            description=text,
            prompt_backend=backend,
            prompt_version=version,
            prompt_jaccard=float(jac),
            prompt_intensity_agreement=float(agree),
        )

    def _use_grammar(self, record: Record, levels: list[int], backend: str) -> str | None:
        """Fill the record from the grammar; the reason it cannot be, else ``None``."""
        result = self._grammar(record, levels)
        if isinstance(result, str):
            return result
        self._fill(record, result[0], backend, GRAMMAR_VERSION, result[1], result[2])
        return None

    def _levels(self, record: Record) -> list[int] | str:
        """The record's validated plan, or why it is unusable."""
        try:
            levels = validate_intensity(record["planned_intensity"])
        except (KeyError, TypeError, ValueError) as exc:
            return f"bad planned_intensity: {exc}"
        emotion = record.get("emotion")
        if emotion not in EMOTION_MIX_KEYS:
            return f"bad emotion {emotion!r}; allowed: {list(EMOTION_MIX_KEYS)}"
        try:
            int(record["seed"])
        except (KeyError, TypeError, ValueError):
            return f"bad seed {record.get('seed')!r}; the plan must give every sample an int seed"
        return levels

    # -- batch --------------------------------------------------------------------------

    def run(self, live: list[Record]) -> None:
        if self.config.backend == "grammar":
            super().run(live)  # per record: run_record
        else:
            self._run_llm(live)

    def run_record(self, record: Record) -> str | None:
        """The grammar backend, one record at a time."""
        levels = self._levels(record)
        if isinstance(levels, str):
            return levels
        return self._use_grammar(record, levels, "grammar")

    def _run_llm(self, live: list[Record]) -> None:
        """The LLM backend: one concurrent request batch, then per record the text, the
        grammar fallback or the drop."""
        # deferred: the LLM client brings tenacity and openai; the grammar backend needs neither
        from stages.prompt.llm import PROMPT_TEMPLATE_VERSION, LLMRequest, LLMSettings, describe_with_llm, run_coroutine

        c = self.config
        plans: list[tuple[Record, list[int]]] = []
        for record in live:
            levels = self._levels(record)
            if isinstance(levels, str):
                drop(record, self.name, levels)
            else:
                plans.append((record, levels))
        settings = LLMSettings(
            base_url=c.base_url,
            model=c.model,
            api_key=self._api_key(),
            concurrency=c.concurrency,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            retry_backoff_s=c.retry_backoff_s,
            max_feedback_rounds=c.max_feedback_rounds,
            min_jaccard=c.min_jaccard,
            min_intensity_agreement=c.min_intensity_agreement,
            temperature=c.temperature,
            give_up_after=c.give_up_after,
        )
        requests = [
            LLMRequest(
                intensity=tuple(levels),
                emotion=str(record["emotion"]),
                demographics=tuple(str(record.get(k, "")) for k in ("ethnicity", "age_band", "gender"))
                if c.include_demographics
                else (),
                seed=int(record["seed"]) if c.vary_by_seed else None,
            )
            for record, levels in plans
        ]
        outcomes = run_coroutine(lambda: describe_with_llm(requests, settings, self.cache_path))
        version = f"{PROMPT_TEMPLATE_VERSION}+{c.model}"
        self.last_stats = {
            "requests": sum(o.requests for o in outcomes),
            "cache_hits": sum(o.cache_hits for o in outcomes),
        }
        for (record, levels), outcome in zip(plans, outcomes, strict=True):
            if outcome.description is not None:
                self._fill(record, outcome.description, "llm", version, outcome.jaccard, outcome.intensity_agreement)
                continue
            if c.on_failure == "drop":
                reason: str | None = outcome.reason or "LLM description not accepted"
            else:
                record["prompt_note"] = outcome.reason
                reason = self._use_grammar(record, levels, "grammar-fallback")
            if reason:
                drop(record, self.name, reason)

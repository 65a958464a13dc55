"""LLM backend: any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, OpenAI, ...).

One call, :func:`describe_with_llm`, describes a whole shard's samples concurrently:

- the real ``openai.AsyncOpenAI`` client, its own retries off; our retry loop (tenacity)
  makes ``max_retries + 1`` attempts at most per request, with exponential backoff, on
  429, 5xx, timeouts and refused connections; other errors (401, 404, ...) are not retried;
- an ``asyncio.Semaphore`` bounds the requests in flight;
- replies are asked for as ``{"description": "..."}`` (``response_format=json_object``),
  but prose, fenced JSON or JSON inside prose is accepted too;
- every reply is read back (:mod:`stages.prompt.readback`); a failing one is sent back to
  the model with the list of missing / extra AUs and wrong levels, up to
  ``max_feedback_rounds`` times;
- every reply is stored in a SQLite cache keyed by (model, prompt-template version,
  temperature, AU vector, emotion, demographic words, sample seed, conversation so far),
  so a resumed build never pays twice; the seed is there so samples sharing a plan still
  get their own texts (``vary_by_seed = false`` in the recipe shares them); the API key is
  never part of a key, a reason or a log line;
- a circuit breaker: after ``give_up_after * (max_retries + 1)`` failed requests in a row
  (one success resets the count), or at once on a non-retryable error such as a bad key,
  the rest of the batch skips the server, so a dead endpoint costs a bounded number of
  requests (that many, plus at most ``concurrency - 1`` already in flight).

A sample that fails comes back with ``description=None`` and a ``reason``; the stage
decides between grammar fallback and drop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from manifests.vocab import AU_INFO, DISFA_AUS
from stages.prompt.cache import RequestCache
from stages.prompt.grammar import INTENSITY_ADJECTIVES, INTENSITY_ADVERBS, LEVEL_NAMES
from stages.prompt.readback import check_description, mismatch_report

__all__ = [
    "PROMPT_TEMPLATE_VERSION",
    "LLMOutcome",
    "LLMRequest",
    "LLMSettings",
    "build_messages",
    "cache_key",
    "describe_with_llm",
    "parse_reply",
    "run_coroutine",
]

PROMPT_TEMPLATE_VERSION = "llm-prompt-1.0"

T = TypeVar("T")


@dataclass(frozen=True)
class LLMSettings:
    base_url: str
    model: str
    api_key: str = field(repr=False)  # never printed, never cached
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    max_feedback_rounds: int = 2
    min_jaccard: float = 1.0
    min_intensity_agreement: float = 0.0
    temperature: float = 0.7
    give_up_after: int = 3


@dataclass(frozen=True)
class LLMRequest:
    intensity: tuple[int, ...]  # 12 ints 0-5, DISFA order
    emotion: str
    demographics: tuple[str, ...] = ()  # e.g. ("east_asian", "young_adult", "female"), may be empty
    # Sampling seed sent to the server and part of the cache key, so two samples with the same
    # plan get their own texts; None lets identical plans share one reply (cheaper, less varied).
    seed: int | None = None


@dataclass
class LLMOutcome:
    description: str | None = None
    jaccard: float = 0.0
    intensity_agreement: float = 0.0
    reason: str | None = None  # why no description was accepted
    requests: int = 0  # HTTP requests actually sent (cache hits excluded)
    cache_hits: int = 0
    rounds: int = 0  # replies read back


class _RequestFailed(Exception):
    """A request that could not be completed within the attempt budget."""

    def __init__(self, message: str, retryable: bool, skipped: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.skipped = skipped  # never sent: the breaker had tripped


_SYSTEM = """You describe a face's expression for an image generator, in one to three sentences, \
in the style of: "The look reveals marked excited enjoyment, with moderate lip corner lift, \
no lip stretching, slight lip part, and moderate lifted cheeks."

Rules:
- Mention every ACTIVE action unit (AU) listed by the user exactly once, in plain words or by its \
FACS name, and put exactly one intensity word for its level right before it.
- Intensity words by level: {levels}.
- Do not describe any other facial movement. You may say that an INACTIVE feature is still \
("still cheeks", "no lip stretching").
- Do not use intensity words for the emotion itself; say e.g. "a hint of sadness" or "vivid joy".
- Reply with a JSON object only: {{"description": "..."}}"""


def _level_vocabulary() -> str:
    parts = []
    for level in sorted(LEVEL_NAMES):
        words = INTENSITY_ADJECTIVES[level][:3] + INTENSITY_ADVERBS[level][:2]
        parts.append(f"{level} = {', '.join(words)}")
    return "; ".join(parts)


def build_messages(request: LLMRequest, history: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """Chat messages for ``request``; ``history`` holds earlier (reply, feedback) pairs."""
    active = [
        f"AU{au} {AU_INFO[au].facs_name}: {LEVEL_NAMES[v]} (level {v})"
        for au, v in zip(DISFA_AUS, request.intensity, strict=True)
        if v > 0
    ]
    inactive = [f"AU{au} {AU_INFO[au].facs_name}" for au, v in zip(DISFA_AUS, request.intensity, strict=True) if v == 0]
    lines = [f"Emotion: {request.emotion}."]
    if request.demographics:
        lines.append("Person: " + ", ".join(w.replace("_", " ") for w in request.demographics) + ".")
    lines.append("ACTIVE AUs: " + ("; ".join(active) if active else "none (a face at rest)") + ".")
    lines.append("INACTIVE AUs: " + ("; ".join(inactive) if inactive else "none") + ".")
    messages = [
        {"role": "system", "content": _SYSTEM.format(levels=_level_vocabulary())},
        {"role": "user", "content": "\n".join(lines)},
    ]
    for reply, feedback in history:
        messages.append({"role": "assistant", "content": reply})
        messages.append(
            {
                "role": "user",
                "content": f"That description was read back with these problems: {feedback}. "
                'Rewrite it following the rules; reply with {"description": "..."} only.',
            }
        )
    return messages


def cache_key(settings: LLMSettings, request: LLMRequest, history: Sequence[tuple[str, str]]) -> str:
    blob = json.dumps(
        [
            settings.model,
            PROMPT_TEMPLATE_VERSION,
            settings.temperature,
            list(request.intensity),
            request.emotion,
            list(request.demographics),
            request.seed,
            [list(h) for h in history],
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# A refusal or apology is not a description, even for a face with no active AU (whose
# read-back is trivially perfect).
_REFUSAL = re.compile(
    r"\b(?:sorry|apologi[sz]e|i cannot|i can ?not|i can't|i am unable|i'm unable|as an ai)\b", re.IGNORECASE
)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models think aloud first
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_reply(content: str | None) -> str | None:
    """The description in a reply: ``{"description": ...}`` (also fenced or inside prose),
    or the prose itself from a server that ignored JSON mode; ``None`` if there is none."""
    text = _THINK.sub("", content or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    obj: Any = None
    for candidate in (text, *(m.group(0) for m in [_OBJECT.search(text)] if m)):
        try:
            obj = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if isinstance(obj, dict):
        desc = obj.get("description")
        return desc.strip() if isinstance(desc, str) and desc.strip() else None
    if obj is not None or not text or text.startswith(("{", "[")) or len(text) > 4000:
        return None
    return text


class _BreakerOpen(Exception):
    """Raised instead of sending a request once the breaker has tripped."""


class _Breaker:
    """Stops calling a failing server for the rest of one batch: trips after ``limit`` failed
    requests in a row (any success resets the count) or at once on a non-retryable error."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.reason: str | None = None

    def failed(self, message: str, retryable: bool) -> None:
        self.consecutive += 1
        if self.reason is None and (not retryable or self.consecutive >= self.limit):
            self.reason = (
                f"LLM server skipped for the rest of the batch after {self.consecutive} "
                f"failed request{'s' if self.consecutive > 1 else ''} in a row; last: {message}"
            )

    def ok(self) -> None:
        self.consecutive = 0


def _describe_error(exc: BaseException, settings: LLMSettings) -> tuple[str, bool]:
    """(message, retryable) for an exception from the openai client."""
    import openai  # deferred: optional (the llm extra); only the LLM backend needs it

    if isinstance(exc, openai.APITimeoutError):
        return f"request to {settings.base_url} timed out after {settings.timeout_s}s", True
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot connect to {settings.base_url} ({exc.__cause__ or exc}); is the server running?", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retryable = code in (408, 409, 429) or code >= 500
        hint = " (check the key in the variable named by api_key_env)" if code in (401, 403) else ""
        hint = f" (is model {settings.model!r} served there?)" if code == 404 else hint
        return f"HTTP {code} from {settings.base_url}{hint}", retryable
    return f"{type(exc).__name__}: {exc}", False


async def _complete(
    client: Any,
    settings: LLMSettings,
    messages: list[dict[str, str]],
    seed: int | None,
    semaphore: asyncio.Semaphore,
    breaker: _Breaker,
    outcome: LLMOutcome,
) -> str:
    """One chat completion with bounded, backed-off retries; returns the reply content."""

    def retryable(exc: BaseException) -> bool:
        return _describe_error(exc, settings)[1]

    retrying = AsyncRetrying(
        stop=stop_after_attempt(settings.max_retries + 1),
        wait=wait_exponential(multiplier=settings.retry_backoff_s, max=settings.retry_backoff_s * 16),
        retry=retry_if_exception(retryable),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                async with semaphore:
                    if breaker.reason:  # tripped while this request waited its turn
                        raise _BreakerOpen(breaker.reason)
                    outcome.requests += 1
                    try:
                        response = await client.chat.completions.create(
                            model=settings.model,
                            messages=messages,
                            temperature=settings.temperature,
                            response_format={"type": "json_object"},
                            **({"seed": seed} if seed is not None else {}),
                        )
                    except Exception as exc:
                        breaker.failed(*_describe_error(exc, settings))
                        raise
                    breaker.ok()
    except _BreakerOpen as exc:
        raise _RequestFailed(str(exc), retryable=False, skipped=True) from None
    except Exception as exc:
        message, can_retry = _describe_error(exc, settings)
        attempts = int(retrying.statistics.get("attempt_number", 1))
        plural = "s" if attempts > 1 else ""
        raise _RequestFailed(f"{message} ({attempts} attempt{plural})", can_retry) from exc
    choices = getattr(response, "choices", None) or []
    return (choices[0].message.content or "") if choices else ""


async def _describe_one(
    client: Any,
    settings: LLMSettings,
    request: LLMRequest,
    cache: RequestCache,
    semaphore: asyncio.Semaphore,
    breaker: _Breaker,
) -> LLMOutcome:
    outcome = LLMOutcome()
    history: list[tuple[str, str]] = []
    problem = ""
    for _ in range(settings.max_feedback_rounds + 1):
        key = cache_key(settings, request, history)
        content = cache.get(key)
        if content is None:
            if breaker.reason:
                outcome.reason = breaker.reason
                return outcome
            try:
                messages = build_messages(request, history)
                content = await _complete(client, settings, messages, request.seed, semaphore, breaker, outcome)
            except _RequestFailed as exc:
                if exc.skipped:
                    outcome.reason = str(exc)
                    return outcome
                outcome.reason = f"LLM request failed: {exc}"
                return outcome
            cache.put(key, settings.model, content)
        else:
            outcome.cache_hits += 1
        outcome.rounds += 1
        description = parse_reply(content)
        if description is None:
            problem = 'the reply was not a JSON object with a non-empty "description" string'
        elif _REFUSAL.search(description):
            problem = "the reply was a refusal or apology, not a description"
        else:
            jac, agree = check_description(description, request.intensity)
            if jac >= settings.min_jaccard and agree >= settings.min_intensity_agreement:
                outcome.description, outcome.jaccard, outcome.intensity_agreement = description, jac, agree
                outcome.reason = None
                return outcome
            outcome.jaccard, outcome.intensity_agreement = jac, agree
            problem = mismatch_report(description, request.intensity) or (
                f"intensity agreement {agree:.2f} below {settings.min_intensity_agreement}"
            )
        history.append((content, problem))
    outcome.reason = (
        f"LLM description failed read-back after {outcome.rounds} repl{'ies' if outcome.rounds > 1 else 'y'}: {problem}"
    )
    return outcome


async def describe_with_llm(
    requests: Sequence[LLMRequest], settings: LLMSettings, cache_path: Path
) -> list[LLMOutcome]:
    """Describe every request (same order); never raises for server trouble."""
    from openai import AsyncOpenAI  # deferred: optional (the llm extra); only the LLM backend needs it

    cache = RequestCache(cache_path, PROMPT_TEMPLATE_VERSION)
    semaphore = asyncio.Semaphore(settings.concurrency)
    breaker = _Breaker(settings.give_up_after * (settings.max_retries + 1))
    client = AsyncOpenAI(
        base_url=settings.base_url, api_key=settings.api_key, timeout=settings.timeout_s, max_retries=0
    )
    # Identical requests (same plan, no seed) are sent once and share the outcome.
    unique = list(dict.fromkeys(requests))
    try:
        outcomes = await asyncio.gather(
            *(_describe_one(client, settings, r, cache, semaphore, breaker) for r in unique)
        )
        by_request = dict(zip(unique, outcomes, strict=True))
        out: list[LLMOutcome] = []
        seen: set[LLMRequest] = set()
        for r in requests:
            first = by_request[r]
            out.append(first if r not in seen else replace(first, requests=0, cache_hits=0))
            seen.add(r)
        return out
    finally:
        await client.close()
        cache.close()


def run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    """Run ``factory()`` to completion from synchronous code: directly in a plain thread,
    or in a helper thread when this thread already runs an event loop (Ray async actors)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(factory))
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_await(factory))).result()


async def _await(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()

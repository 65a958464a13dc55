from __future__ import annotations

import asyncio
import copy
import socket
import threading
from pathlib import Path

import pytest

from stages.base import StageContext, StageError, is_dropped
from stages.prompt.grammar import GRAMMAR_VERSION
from stages.prompt.llm import (
    PROMPT_TEMPLATE_VERSION,
    LLMRequest,
    LLMSettings,
    build_messages,
    cache_key,
    parse_reply,
)
from stages.prompt.readback import check_description
from stages.prompt.stage import PromptConfig, PromptStage
from tests.stages.prompt.plans import make_records
from tests.stages.prompt.stub_llm import StubLLM

KEY = "sk-test-secret-4242"
N = 8


@pytest.fixture(scope="module")
def stub():
    server = StubLLM()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _api_key(monkeypatch) -> None:
    monkeypatch.setenv("STUB_LLM_KEY", KEY)


@pytest.fixture(autouse=True)
def node_cache(monkeypatch, tmp_path_factory) -> Path:
    """The node-local cache folder (the reply cache lives there, never in the dataset)."""
    folder = tmp_path_factory.mktemp("node-cache")
    monkeypatch.setenv("MIFA_CACHE_DIR", str(folder))
    return folder


def _stage(stub: StubLLM, run_dir: Path, **options) -> PromptStage:
    settings = dict(
        backend="llm",
        base_url=stub.base_url,
        model="stub-model",
        api_key_env="STUB_LLM_KEY",
        timeout_s=0.5,
        max_retries=2,
        retry_backoff_s=0.01,
        max_feedback_rounds=2,
        concurrency=4,
    )
    settings.update(options)
    stage = PromptStage(PromptConfig(**settings), StageContext(run_dir=run_dir))
    stage.setup()
    return stage


def _run(stage: PromptStage, records: list[dict]) -> list[dict]:
    batch = copy.deepcopy(records)
    out = stage.process(batch)
    assert len(out) == len(records) and [r["key"] for r in out] == [r["key"] for r in records]
    return out


def _assert_all_described_or_dropped(records: list[dict]) -> None:
    for r in records:
        if is_dropped(r):
            assert r["dropped_by"] == "prompt" and r["drop_reason"]
        else:
            assert r["description"] and r["prompt_backend"] in ("llm", "grammar-fallback")
            assert check_description(r["description"], r["planned_intensity"]) == (
                r["prompt_jaccard"],
                r["prompt_intensity_agreement"],
            )


def test_good_server_then_resume_hits_cache(stub, tmp_path, node_cache) -> None:
    records = make_records(N, seed=1)
    stub.reset("good")
    out = _run(_stage(stub, tmp_path), records)
    assert stub.requests == N
    assert all(r["prompt_backend"] == "llm" and r["prompt_jaccard"] == 1.0 for r in out)
    assert all(r["prompt_version"] == f"{PROMPT_TEMPLATE_VERSION}+stub-model" for r in out)
    assert stub.auth_headers == {f"Bearer {KEY}"}
    body = stub.bodies[0]
    assert body["model"] == "stub-model" and body["response_format"] == {"type": "json_object"}

    stub.reset("good")
    again = _run(_stage(stub, tmp_path), records)  # a resumed build: new stage, same run dir
    assert stub.requests == 0
    assert [r["description"] for r in again] == [r["description"] for r in out]
    (cache,) = node_cache.rglob("llm.sqlite")  # on the node's disk, nothing in the dataset folder
    assert list(tmp_path.rglob("*")) == []
    assert KEY.encode() not in cache.read_bytes()

    stub.reset("good")
    _run(_stage(stub, tmp_path / "other-dataset"), records)  # another dataset: its own cache
    assert stub.requests == N and len(list(node_cache.rglob("llm.sqlite"))) == 2


def test_seed_gives_each_sample_its_own_request_unless_disabled(stub, tmp_path) -> None:
    records = make_records(4, seed=20)
    for r in records:
        r["planned_intensity"], r["emotion"] = [0, 0, 3, 0, 0, 0, 0, 2, 0, 0, 0, 0], "sadness"
    stub.reset("good")
    _run(_stage(stub, tmp_path / "a", include_demographics=False), records)
    assert stub.requests == 4
    assert sorted(b["seed"] for b in stub.bodies) == sorted(r["seed"] for r in records)
    stub.reset("good")
    out = _run(_stage(stub, tmp_path / "b", include_demographics=False, vary_by_seed=False), records)
    assert stub.requests == 1 and "seed" not in stub.bodies[0]
    assert len({r["description"] for r in out}) == 1


def test_prose_reply_from_a_server_ignoring_json_mode_is_accepted(stub, tmp_path) -> None:
    stub.reset("prose")
    out = _run(_stage(stub, tmp_path), make_records(N, seed=2))
    assert stub.requests == N
    assert all(r["prompt_backend"] == "llm" for r in out)


def test_garbage_is_retried_with_feedback_then_falls_back_to_grammar(stub, tmp_path) -> None:
    stub.reset("garbage")
    out = _run(_stage(stub, tmp_path, max_feedback_rounds=2), make_records(N, seed=3))
    assert stub.requests == N * 3  # first reply + 2 feedback rounds per sample
    feedback = stub.bodies[-1]["messages"][-1]["content"]
    assert "missing AU" in feedback
    for r in out:
        assert r["prompt_backend"] == "grammar-fallback"
        assert r["prompt_version"] == GRAMMAR_VERSION and r["prompt_jaccard"] == 1.0
        assert "failed read-back after 3 replies" in r["prompt_note"]
    _assert_all_described_or_dropped(out)


def test_refusal_is_not_accepted_even_for_a_face_at_rest(stub, tmp_path) -> None:
    records = make_records(3, seed=30)
    for r in records:
        r["planned_intensity"], r["emotion"] = [0] * 12, "neutral"
    stub.reset("refusal")  # "I am sorry, but I cannot help ..." reads back as no AU: Jaccard 1.0
    out = _run(_stage(stub, tmp_path, max_feedback_rounds=0), records)
    assert stub.requests == 3
    assert all(r["prompt_backend"] == "grammar-fallback" and "refusal" in r["prompt_note"] for r in out)


def test_wrong_aus_dropped_with_reason_when_on_failure_is_drop(stub, tmp_path) -> None:
    stub.reset("wrong")
    out = _run(_stage(stub, tmp_path, max_feedback_rounds=1, on_failure="drop"), make_records(N, seed=4))
    assert stub.requests == N * 2
    assert all(is_dropped(r) for r in out)
    assert all("failed read-back" in r["drop_reason"] and "AU" in r["drop_reason"] for r in out)
    assert not any(KEY in r["drop_reason"] for r in out)


def test_feedback_round_repairs_a_wrong_reply(stub, tmp_path) -> None:
    stub.reset("fix_after_feedback")
    out = _run(_stage(stub, tmp_path), make_records(N, seed=5))
    assert stub.requests == N * 2
    assert all(r["prompt_backend"] == "llm" and r["prompt_jaccard"] == 1.0 for r in out)
    second = next(b for b in stub.bodies if len(b["messages"]) > 2)
    assert second["messages"][2]["role"] == "assistant" and "read back" in second["messages"][3]["content"]


@pytest.mark.parametrize("status", ["500", "429"])
def test_transient_errors_are_retried_and_recover(stub, tmp_path, status) -> None:
    stub.reset(status, fail_first=2)
    out = _run(_stage(stub, tmp_path, concurrency=1), make_records(N, seed=6))
    assert stub.requests == N + 2
    assert all(r["prompt_backend"] == "llm" for r in out)


@pytest.mark.parametrize("status", ["500", "429"])
def test_persistent_errors_cost_exactly_the_attempt_budget(stub, tmp_path, status) -> None:
    stub.reset(status)
    # A generous timeout: the stub answers at once, and a request timed out by a loaded machine
    # before the stub read it would be an attempt the stub never counted.
    stage = _stage(stub, tmp_path, max_retries=2, give_up_after=1000, concurrency=2, timeout_s=10)
    out = _run(stage, make_records(N, seed=7))
    assert stub.requests == N * 3  # 1 attempt + 2 retries per sample, no more
    for r in out:
        assert r["prompt_backend"] == "grammar-fallback"
        assert f"HTTP {status}" in r["prompt_note"] and "(3 attempts)" in r["prompt_note"]


def test_breaker_stops_calling_a_failing_server(stub, tmp_path) -> None:
    stub.reset("500")
    stage = _stage(stub, tmp_path, max_retries=2, give_up_after=2, concurrency=2)
    out = _run(stage, make_records(N, seed=7))
    # trips after give_up_after x 3 failures in a row; at most concurrency - 1 more were in flight
    assert 2 * 3 <= stub.requests <= 2 * 3 + 1
    assert all(r["prompt_backend"] == "grammar-fallback" for r in out)
    assert all("skipped for the rest of the batch" in r["prompt_note"] and "HTTP 500" in r["prompt_note"] for r in out)


def test_stalling_server_times_out_and_falls_back(stub, tmp_path) -> None:
    stub.reset("stall")
    stub.stall_s = 1.5
    out = _run(
        _stage(stub, tmp_path, timeout_s=0.3, max_retries=1, give_up_after=1, concurrency=2), make_records(4, seed=8)
    )
    assert stub.requests <= 4 * 2
    assert all(r["prompt_backend"] == "grammar-fallback" for r in out)
    assert all("timed out" in r["prompt_note"] or "skipped" in r["prompt_note"] for r in out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_server_dying_after_the_start_gives_bounded_attempts_then_drop(tmp_path) -> None:
    doomed = StubLLM()
    config = PromptConfig(
        backend="llm",
        base_url=doomed.base_url,
        max_retries=1,
        retry_backoff_s=0.01,
        timeout_s=0.5,
        on_failure="drop",
        give_up_after=1,
        concurrency=2,
        api_key_env="STUB_LLM_KEY",
    )
    stage = PromptStage(config, StageContext(run_dir=tmp_path))
    stage.setup()  # the probe finds the server
    doomed.close()
    out = stage.process(make_records(20, seed=9))
    assert all(is_dropped(r) for r in out)
    assert all("cannot connect" in r["drop_reason"] or "skipped" in r["drop_reason"] for r in out)
    # breaker: give_up_after x attempts failed in a row, plus at most concurrency - 1 in flight
    assert stage.last_stats["requests"] <= 1 * 2 + 1


def _dead_url() -> str:
    return f"http://127.0.0.1:{_free_port()}/v1"


def test_a_dead_endpoint_fails_setup_when_samples_would_be_dropped(tmp_path) -> None:
    config = PromptConfig(backend="llm", base_url=_dead_url(), on_failure="drop", api_key_env="STUB_LLM_KEY")
    with pytest.raises(StageError, match=r"cannot reach the LLM endpoint http://127\.0\.0\.1:\d+/v1.*on_failure"):
        PromptStage(config, StageContext(run_dir=tmp_path)).setup()


def test_a_dead_endpoint_is_a_warning_when_the_grammar_takes_over(tmp_path) -> None:
    config = PromptConfig(backend="llm", base_url=_dead_url(), on_failure="grammar", api_key_env="STUB_LLM_KEY")
    stage = PromptStage(config, StageContext(run_dir=tmp_path))
    stage.setup()
    assert len(stage.warnings) == 1 and "cannot reach" in stage.warnings[0] and "grammar" in stage.warnings[0]


def test_a_refused_key_fails_setup_once(stub, tmp_path) -> None:
    stub.reset("401")
    with pytest.raises(StageError, match=r"refused the API key \(HTTP 401\)"):
        _stage(stub, tmp_path, on_failure="drop")
    assert stub.requests == 0  # the probe is one GET, before any description is asked for


def test_a_live_endpoint_passes_the_probe_without_a_warning(stub, tmp_path) -> None:
    stub.reset("good")
    assert _stage(stub, tmp_path, on_failure="drop").warnings == []


def test_process_runs_from_a_plain_thread_and_inside_an_event_loop(stub, tmp_path) -> None:
    stub.reset("good")
    stage = _stage(stub, tmp_path)
    records = make_records(3, seed=10)
    result: dict[str, list[dict]] = {}
    worker = threading.Thread(target=lambda: result.setdefault("thread", _run(stage, records)))
    worker.start()
    worker.join(timeout=30)

    async def inside_loop() -> list[dict]:
        return _run(stage, records)

    result["loop"] = asyncio.run(inside_loop())
    assert [r["description"] for r in result["thread"]] == [r["description"] for r in result["loop"]]
    assert all(r["prompt_backend"] == "llm" for r in result["loop"])


def test_missing_key_for_remote_endpoint_is_a_clear_setup_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    config = PromptConfig(backend="llm", base_url="https://llm.example.com/v1", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(StageError, match="NO_SUCH_KEY_VAR"):
        PromptStage(config, StageContext(run_dir=tmp_path)).setup()


def test_parse_reply_tolerates_common_server_habits() -> None:
    assert parse_reply('{"description": "A slight smile."}') == "A slight smile."
    assert parse_reply('```json\n{"description": "A slight smile."}\n```') == "A slight smile."
    assert parse_reply('Sure! {"description": "A slight smile."} Hope it helps.') == "A slight smile."
    assert parse_reply("A slight smile.") == "A slight smile."
    assert parse_reply('{"text": "A slight smile."}') is None
    assert parse_reply('{"description": ""}') is None
    assert parse_reply("") is None and parse_reply(None) is None
    assert parse_reply("[1, 2]") is None
    assert parse_reply('<think>{maybe} a smile?</think>\n{"description": "A slight smile."}') == "A slight smile."


def test_cache_key_covers_request_but_never_the_api_key() -> None:
    a = LLMSettings(base_url="http://x/v1", model="m", api_key="k1")
    b = LLMSettings(base_url="http://x/v1", model="m", api_key="k2")
    req = LLMRequest(intensity=(0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0), emotion="anger", demographics=("white",))
    assert cache_key(a, req, []) == cache_key(b, req, [])
    assert cache_key(a, req, []) != cache_key(a, req, [("reply", "missing AU4")])
    assert cache_key(a, req, []) != cache_key(LLMSettings("http://x/v1", "m2", "k1"), req, [])
    other = LLMRequest(intensity=req.intensity, emotion="fear", demographics=("white",))
    assert cache_key(a, req, []) != cache_key(a, other, [])
    assert "k1" not in repr(a)
    messages = build_messages(req, [("reply", "missing AU4")])
    assert "AU4 brow lowerer: moderate (level 3)" in messages[1]["content"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from stages import stage_class
from stages.base import StageContext, drop, is_dropped
from stages.prompt.grammar import GRAMMAR_VERSION
from stages.prompt.stage import PromptConfig, PromptStage
from tests.stages.prompt.plans import make_records


def _stage(tmp_path, **options) -> PromptStage:
    stage = PromptStage(PromptConfig(**options), StageContext(run_dir=tmp_path))
    stage.setup()
    return stage


def test_registered_as_the_prompt_kind() -> None:
    cls = stage_class("prompt")
    assert cls is PromptStage and cls.kind == "prompt"
    assert PromptConfig().backend == "grammar"  # an empty recipe section works


def test_recipe_section_reaches_the_stage_config() -> None:
    from factory.recipe import RecipeError, recipe_from_dict

    recipe = recipe_from_dict({"prompt": {"name": "prompt", "backend": "llm", "timeout_s": 5, "on_failure": "drop"}})
    config = recipe.stage_config("prompt")
    assert isinstance(config, PromptConfig) and config.backend == "llm" and config.on_failure == "drop"
    with pytest.raises(RecipeError, match=r"prompt\.backend"):
        recipe_from_dict({"prompt": {"name": "prompt", "backend": "gpt4"}})


def test_unknown_option_and_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        PromptConfig(backnd="llm")
    with pytest.raises(ValidationError):
        PromptConfig(backend="gpt")
    with pytest.raises(ValidationError):
        PromptConfig(on_failure="ignore")


def test_grammar_backend_fills_every_prompt_column(tmp_path) -> None:
    records = make_records(200, seed=11)
    out = _stage(tmp_path).process(copy.deepcopy(records))
    assert [r["key"] for r in out] == [r["key"] for r in records]
    for r in out:
        assert r["prompt_backend"] == "grammar" and r["prompt_version"] == GRAMMAR_VERSION
        assert r["prompt_jaccard"] == 1.0 and r["prompt_intensity_agreement"] == 1.0
        assert isinstance(r["description"], str) and len(r["description"]) > 20


def test_same_record_same_text_across_stage_instances_and_threads(tmp_path) -> None:
    records = make_records(20, seed=12)
    first = _stage(tmp_path).process(copy.deepcopy(records))
    box: dict[str, list] = {}
    second = _stage(tmp_path)
    t = threading.Thread(target=lambda: box.setdefault("out", second.process(copy.deepcopy(records))))
    t.start()
    t.join(timeout=60)
    assert [r["description"] for r in box["out"]] == [r["description"] for r in first]


def test_demographics_can_be_left_out(tmp_path) -> None:
    records = make_records(60, seed=13)
    out = _stage(tmp_path, include_demographics=False).process(copy.deepcopy(records))
    words = ("East Asian", "South Asian", "Black", "White", "Middle Eastern", "Latin", "woman", "girl")
    assert not any(w in r["description"] for r in out for w in words)


def test_bad_planned_vector_is_dropped_with_reason_and_dropped_records_untouched(tmp_path) -> None:
    records = make_records(6, seed=14)
    records[0]["planned_intensity"] = [1, 2, 3]
    records[1]["planned_intensity"] = [9] + [0] * 11
    drop(records[2], "planner", "earlier problem")
    records[3]["emotion"] = "joyful"
    records[4]["seed"] = None
    out = _stage(tmp_path).process(records)
    assert is_dropped(out[0]) and "12 values" in out[0]["drop_reason"]
    assert is_dropped(out[1]) and "AU1 is 9" in out[1]["drop_reason"]
    assert out[2]["dropped_by"] == "planner" and "description" not in out[2]
    assert is_dropped(out[3]) and "bad emotion 'joyful'" in out[3]["drop_reason"]
    assert is_dropped(out[4]) and "bad seed None" in out[4]["drop_reason"]
    assert not is_dropped(out[5]) and out[5]["description"]


def test_description_failing_read_back_is_never_used(tmp_path, monkeypatch) -> None:
    import stages.prompt.stage as stage_module
    from stages.prompt.grammar import Description

    # A grammar regression (text that names the wrong AU) must be caught, not stored.
    monkeypatch.setattr(stage_module, "describe", lambda *a, **k: Description("A slight smile.", "<AU>"))
    records = make_records(4, seed=15)
    for r in records:
        r["planned_intensity"] = [0, 0, 4] + [0] * 9
    out = _stage(tmp_path).process(records)
    assert all(
        is_dropped(r) and "failed read-back" in r["drop_reason"] and "missing AU4" in r["drop_reason"] for r in out
    )


def test_grammar_stage_imports_no_heavy_package() -> None:
    code = (
        "import sys; from stages import stage_class; from stages.base import StageContext; "
        "from tests.stages.prompt.plans import make_records; "
        "cls = stage_class('prompt'); s = cls(cls.config_model(), StageContext(run_dir='.')); "
        "s.process(make_records(5)); "
        "print(sorted(m for m in ('openai', 'torch', 'httpx', 'tenacity') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.stdout.strip() == "[]"

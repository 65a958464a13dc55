from __future__ import annotations

import re

import pytest

from manifests.vocab import DISFA_AUS
from stages.prompt import grammar
from stages.prompt.grammar import GRAMMAR_VERSION, describe, validate_intensity
from stages.prompt.readback import INTENSITY_WORDS, read_back
from tests.stages.prompt.plans import EMOTION_KEYS, make_records

N = 10_000


@pytest.fixture(scope="module")
def samples() -> list[tuple[dict, grammar.Description]]:
    records = make_records(N, seed=7)
    return [
        (
            r,
            describe(
                r["planned_intensity"],
                r["emotion"],
                seed=r["seed"],
                ethnicity=r["ethnicity"],
                age_band=r["age_band"],
                gender=r["gender"],
                mention_inactive=0.35,
            ),
        )
        for r in records
    ]


def test_same_seed_same_text_other_seed_other_text() -> None:
    v = [0, 0, 4, 0, 0, 2, 0, 3, 0, 0, 1, 0]
    a = describe(v, "sadness", seed=42, ethnicity="black", age_band="elderly", gender="female")
    b = describe(list(v), "sadness", seed=42, ethnicity="black", age_band="elderly", gender="female")
    assert a == b
    others = {describe(v, "sadness", seed=s).text for s in range(20)}
    assert len(others) > 15


def test_at_least_1000_sentence_shapes_in_10000(samples) -> None:
    shapes = {d.shape for _, d in samples}
    assert len(shapes) >= 1000
    # Without list lengths (runs of "<AU>" items collapsed), the frames alone still vary.
    collapsed = {
        re.sub(
            r"<AU>(?:(?:, |, and | and |, as well as | as well as |, along with | along with "
            r"|, plus )<AU>)+",
            "<AUs>",
            d.shape,
        )
        for _, d in samples
    }
    assert len(collapsed) >= 500  # measured: 4642 shapes, 1058 without list lengths


def test_shape_is_text_with_placeholders(samples) -> None:
    for _, d in samples[:500]:
        frame_words = [w for w in re.split(r"<AU>|<E>|<W>", d.shape) if w.strip(" ,.;:")]
        for part in frame_words:
            assert part.strip() in d.text


def test_every_active_au_gets_an_intensity_word_of_its_level(samples) -> None:
    for record, d in samples[:2000]:
        planned = {au: v for au, v in zip(DISFA_AUS, record["planned_intensity"], strict=True) if v}
        assert read_back(d.text).levels == planned, d.text


def test_demographics_in_text_and_generic_subject_without_them() -> None:
    v = [2, 0, 0, 0, 3, 0, 4, 0, 0, 0, 2, 0]
    with_subject = 0
    for s in range(40):
        d = describe(v, "happiness", seed=s, ethnicity="east_asian", age_band="child", gender="female")
        if "<W>" in d.shape:
            with_subject += 1
            assert "East Asian" in d.text and "girl" in d.text, d.text
        plain = describe(v, "happiness", seed=s).text
        assert "Asian" not in plain and "girl" not in plain
    assert with_subject > 10


def test_neutral_face_without_active_aus_reads_back_empty() -> None:
    d = describe([0] * 12, "neutral", seed=3)
    assert d.text and read_back(d.text).levels == {}


def test_intensity_words_map_to_exactly_one_level() -> None:
    seen: dict[str, int] = {}
    for table in (grammar.INTENSITY_ADJECTIVES, grammar.INTENSITY_ADVERBS):
        for level, words in table.items():
            for w in words:
                assert seen.setdefault(w, level) == level, f"{w!r} used for two levels"
                assert INTENSITY_WORDS[w] == level


def test_frames_and_emotion_phrases_carry_no_au_cue_or_intensity_word() -> None:
    texts = [
        f.replace("{E}", "").replace("{W}", "").replace("{L}", "").replace("{I}", "")
        for f in (*grammar._FRAMES, *grammar._REST_FRAMES, *grammar._CONTINUATIONS, *grammar._INACTIVE_SENTENCES)
    ]
    texts += [w for ws in grammar.EMOTION_NOUNS.values() for w in ws] + list(grammar._NEUTRAL_PHRASES)
    texts += [t.format(e="joy") for ts in grammar._EMOTION_STRENGTH.values() for t in ts]
    word_rx = re.compile(r"\b(?:" + "|".join(map(re.escape, INTENSITY_WORDS)) + r")\b")
    for t in texts:
        assert read_back(t).levels == {}, t
        assert not word_rx.search(t.lower()), t


def test_inactive_mentions_never_read_as_active() -> None:
    for au, phrases in grammar.AU_INACTIVE_TEMPLATES.items():
        for p in phrases:
            rb = read_back(f"The face shows {p}.")
            assert rb.levels == {}, p
            if p.startswith("no "):  # an explicit negation is recorded as inactive
                assert rb.inactive == {au}, p
    assert read_back("no lip stretching").inactive == {20}


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="12 values"):
        validate_intensity([1, 2])
    with pytest.raises(ValueError, match="AU4 is 7"):
        validate_intensity([0, 0, 7] + [0] * 9)
    with pytest.raises(ValueError, match="emotion 'joyful'"):
        describe([0] * 12, "joyful", seed=0)


def test_all_emotions_render_and_version_is_set() -> None:
    for e in EMOTION_KEYS:
        assert describe([0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0], e, seed=1).text.endswith(".")
    assert GRAMMAR_VERSION.startswith("grammar-")

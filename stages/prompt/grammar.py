"""Embedded grammar: planned AU intensities -> a varied, natural description (no network).

The style follows MAUGen Figure 4 ("The look reveals marked excited enjoyment, with ...
moderate lip corner lift, no lip stretching, defined lip part ..."): an emotion phrase, then
one phrase per active AU carrying exactly one intensity word, optionally some inactive AUs
("still cheeks", "no lip stretching"), inside one of many sentence frames.

Every choice is drawn from ``random.Random`` seeded with the grammar version and the
sample's ``seed``, so a sample always gets the same text for a given ``GRAMMAR_VERSION``.
The vocabulary is shared with :mod:`stages.prompt.readback`: each intensity word maps to
exactly one level, and frame and emotion words contain no AU cue and no intensity word
(``tests/stages/prompt/test_grammar.py`` checks both).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from manifests.vocab import AU_INFO, DISFA_AUS, EMOTIONS, INTENSITY_MAX

__all__ = [
    "AU_ACTIVE_TEMPLATES",
    "AU_INACTIVE_TEMPLATES",
    "EMOTION_NOUNS",
    "GRAMMAR_VERSION",
    "INTENSITY_ADJECTIVES",
    "INTENSITY_ADVERBS",
    "LEVEL_NAMES",
    "Description",
    "describe",
    "validate_intensity",
]

GRAMMAR_VERSION = "grammar-1.0"

# The canonical name of each level (FACS A-E mapped to 1-5), used in LLM prompts.
LEVEL_NAMES: dict[int, str] = {1: "trace", 2: "slight", 3: "moderate", 4: "marked", 5: "extreme"}

# Each word belongs to exactly one level; readback.py inverts these tables.
INTENSITY_ADJECTIVES: dict[int, tuple[str, ...]] = {
    1: ("trace", "faint", "barely perceptible", "minimal"),
    2: ("slight", "mild", "subtle", "light"),
    3: ("moderate", "noticeable", "clear", "definite", "defined", "visible"),
    4: ("marked", "pronounced", "strong", "prominent", "distinct"),
    5: ("extreme", "maximal", "intense", "very strong"),
}
INTENSITY_ADVERBS: dict[int, tuple[str, ...]] = {
    1: ("faintly", "barely", "minimally", "just perceptibly"),
    2: ("slightly", "mildly", "subtly", "lightly"),
    3: ("moderately", "noticeably", "clearly", "definitely", "visibly"),
    4: ("markedly", "strongly", "prominently", "distinctly"),
    5: ("extremely", "maximally", "intensely", "very strongly"),
}

# Active phrasings per AU: "{a}" takes an intensity adjective, "{d}" an adverb.
AU_ACTIVE_TEMPLATES: dict[int, tuple[str, ...]] = {
    1: (
        "{a} inner brow raise",
        "{a} inner brow lift",
        "{a} lift of the inner brows",
        "{a} raising of the inner brows",
        "{d} raised inner brows",
        "{d} lifted inner brows",
        "inner brows {d} raised",
    ),
    2: (
        "{a} outer brow raise",
        "{a} outer brow lift",
        "{a} lift of the outer brows",
        "{d} raised outer brows",
        "{d} arched outer brows",
        "outer brows {d} lifted",
    ),
    4: (
        "{a} brow lowering",
        "{a} frown",
        "{a} brow furrow",
        "{a} knitting of the brows",
        "{d} lowered brows",
        "{d} furrowed brows",
        "{d} knitted brows",
        "brows {d} drawn down",
    ),
    5: (
        "{a} upper lid raise",
        "{a} lid elevation",
        "{a} upper lid lift",
        "{a} widening of the eyes",
        "{d} raised upper lids",
        "{d} widened eyes",
        "upper lids {d} raised",
    ),
    6: (
        "{a} cheek raise",
        "{a} cheek lift",
        "{a} lifting of the cheeks",
        "{d} lifted cheeks",
        "{d} raised cheeks",
        "cheeks {d} raised",
    ),
    9: (
        "{a} nose wrinkle",
        "{a} nose crinkle",
        "{a} wrinkling of the nose",
        "{a} crinkling of the nose",
        "{d} wrinkled nose",
        "{d} crinkled nose",
        "{d} scrunched nose",
        "nose {d} wrinkled",
    ),
    12: (
        "{a} lip corner lift",
        "{a} lip corner raise",
        "{a} smile",
        "{a} upward pull of the lip corners",
        "{d} raised lip corners",
        "{d} upturned lip corners",
        "{d} lifted mouth corners",
        "lip corners {d} pulled up",
    ),
    15: (
        "{a} lip corner depression",
        "{a} downturn of the lip corners",
        "{a} downward pull of the lip corners",
        "{d} downturned lip corners",
        "{d} lowered lip corners",
        "{d} depressed mouth corners",
        "lip corners {d} pulled down",
    ),
    17: (
        "{a} chin raise",
        "{a} chin lift",
        "{a} upward push of the chin",
        "{d} raised chin",
        "{d} puckered chin",
        "chin {d} pushed up",
    ),
    20: (
        "{a} lip stretch",
        "{a} lip stretching",
        "{a} horizontal stretch of the lips",
        "{d} stretched lips",
        "{d} stretched mouth",
        "lips {d} stretched sideways",
    ),
    25: (
        "{a} lip part",
        "{a} lip separation",
        "{a} parting of the lips",
        "{a} separation of the lips",
        "{d} parted lips",
        "{d} separated lips",
        "lips {d} apart",
    ),
    26: (
        "{a} jaw drop",
        "{a} jaw release",
        "{a} lowering of the jaw",
        "{a} drop of the jaw",
        "{d} dropped jaw",
        "{d} lowered jaw",
        "{d} released jaw",
        "jaw {d} dropped",
    ),
}

# The FACS-name forms (paper: FACS names next to plain language).
_FACS_TEMPLATES: tuple[str, ...] = ("{a} {name} (AU{au})", "AU{au} ({name}) at {a} intensity")

# Inactive mentions; none of them contains an active cue without a negation before it.
AU_INACTIVE_TEMPLATES: dict[int, tuple[str, ...]] = {
    1: ("still inner brows", "inner brows at rest", "no inner brow raise"),
    2: ("still outer brows", "outer brows at rest", "no outer brow raise"),
    4: ("no brow lowering", "no frown", "unfurrowed brows"),
    5: ("still upper lids", "upper lids at rest", "no lid elevation"),
    6: ("still cheeks", "cheeks without movement", "no cheek raise"),
    9: ("nose without movement", "a still nose", "no nose wrinkle"),
    12: ("no smile", "no lip corner lift"),
    15: ("no lip corner depression", "no downturn of the lip corners"),
    17: ("a still chin", "chin at rest", "no chin raise"),
    20: ("no lip stretching", "no lip stretch"),
    25: ("closed lips", "lips together", "no lip part"),
    26: ("a still jaw", "jaw at rest", "no jaw drop"),
}

EMOTION_NOUNS: dict[str, tuple[str, ...]] = {
    "happiness": ("happiness", "joy", "excited enjoyment", "delight", "cheerfulness", "amusement"),
    "sadness": ("sadness", "sorrow", "melancholy", "dejection", "grief"),
    "surprise": ("surprise", "astonishment", "amazement", "startled wonder"),
    "fear": ("fear", "alarm", "apprehension", "fright", "dread"),
    "anger": ("anger", "irritation", "indignation", "fury", "hostility"),
    "disgust": ("disgust", "revulsion", "distaste", "appalled disgust", "aversion"),
    "contempt": ("contempt", "disdain", "scorn", "derision"),
    "mixed": ("mixed emotions", "conflicting feelings", "ambivalence", "blended feelings"),
}
_NEUTRAL_PHRASES = (
    "a neutral expression",
    "calm neutrality",
    "quiet composure",
    "a composed, neutral look",
    "a relaxed, neutral face",
)
# Emotion strength words: deliberately disjoint from the AU intensity vocabulary so an
# emotion phrase can never be read back as an AU level.
_EMOTION_STRENGTH: dict[str, tuple[str, ...]] = {
    "low": ("a hint of {e}", "a touch of {e}", "subdued {e}", "restrained {e}", "quiet {e}"),
    "mid": ("genuine {e}", "palpable {e}", "earnest {e}", "sincere {e}", "{e}"),
    "high": ("unmistakable {e}", "vivid {e}", "deep {e}", "overwhelming {e}", "raw {e}"),
}

_ETHNICITY_WORDS: dict[str, tuple[str, ...]] = {
    "east_asian": ("East Asian",),
    "south_asian": ("South Asian",),
    "black": ("Black",),
    "white": ("White",),
    "middle_eastern": ("Middle Eastern",),
    "latino": ("Latino", "Latina"),  # by gender below
}
_PERSON_NOUNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("child", "female"): ("girl", "young girl"),
    ("child", "male"): ("boy", "young boy"),
    ("teen", "female"): ("teenage girl", "adolescent girl"),
    ("teen", "male"): ("teenage boy", "adolescent boy"),
    ("young_adult", "female"): ("young woman",),
    ("young_adult", "male"): ("young man",),
    ("adult", "female"): ("woman", "adult woman"),
    ("adult", "male"): ("man", "adult man"),
    ("middle_aged", "female"): ("middle-aged woman",),
    ("middle_aged", "male"): ("middle-aged man",),
    ("elderly", "female"): ("elderly woman", "older woman"),
    ("elderly", "male"): ("elderly man", "older man"),
}
_GENERIC_SUBJECTS = ("the person", "the subject", "this person", "the individual")

# Sentence frames. {E}: emotion phrase, {W}: who, {L}: list of AU phrases.
# Frame words avoid every AU cue, intensity word and negation (checked by a test).
_FRAMES: tuple[str, ...] = (
    "The look reveals {E}, with {L}.",
    "{E} is apparent, emphasized by {L}.",
    "{E} shows on the face of {W}, with {L}.",
    "{W} displays {E}, conveyed through {L}.",
    "{W} wears an expression of {E}: {L}.",
    "A portrait of {W} showing {E}, featuring {L}.",
    "In this face, {E} comes through in {L}.",
    "{E}, expressed by {W} through {L}.",
    "Close-up of {W} with {E}; the face shows {L}.",
    "{W} with {E}. The face shows {L}.",
    "Facial expression: {E}. Action units: {L}.",
    "The expression of {W} suggests {E}, built from {L}.",
    "{E} registers across the face of {W}, through {L}.",
    "We see {W} expressing {E}, with {L}.",
    "Here {W} conveys {E} by way of {L}.",
    "A face of {E}, shaped by {L}.",
    "{W} looks out with {E}; note {L}.",
    "The overall impression is {E}, carried by {L}.",
    "{E} dominates the face, which shows {L}.",
    "Photo of {W}: {E}, with {L}.",
    "Showing {E}, {W} presents {L}.",
    "{E} can be read in {L}.",
    "The face of {W} carries {E}, seen in {L}.",
    "An image of {W} whose face holds {E}, through {L}.",
    "{E} is written on the face of {W}, with {L}.",
    "Portrait, {E}: {L}.",
)
# Frames for a face with no active AU ({I}: inactive mentions, always at least one).
_REST_FRAMES: tuple[str, ...] = (
    "{W} shows {E}, with {I}.",
    "{E}: the face of {W} is at rest, with {I}.",
    "A portrait of {W} showing {E}; {I}.",
    "The look reveals {E}, with {I}.",
    "{E}, with {I}, on the face of {W}.",
)
# A second sentence carrying the rest of the active list.
_CONTINUATIONS: tuple[str, ...] = (
    "It also shows {L}.",
    "Also present: {L}.",
    "Beyond that, {L}.",
    "In addition, {L}.",
    "The rest of the face adds {L}.",
)
# A trailing sentence for inactive mentions (when not inline).
_INACTIVE_SENTENCES: tuple[str, ...] = (
    "Elsewhere, {I}.",
    "Otherwise, {I}.",
    "The rest of the face: {I}.",
    "Meanwhile, {I}.",
)


@dataclass(frozen=True)
class Description:
    """A description and its *shape*: the same text with the emotion phrase, the subject
    and each AU phrase (intensity word included) replaced by ``<E>``, ``<W>`` and ``<AU>``.
    Two descriptions share a shape when only their vocabulary differs, not their frame,
    list layout or length."""

    text: str
    shape: str


def validate_intensity(intensity: Sequence[int]) -> list[int]:
    """The planned vector as 12 ints 0-5, or ``ValueError`` naming the problem."""
    values = list(intensity)
    if len(values) != len(DISFA_AUS):
        raise ValueError(f"planned_intensity must have {len(DISFA_AUS)} values, got {len(values)}")
    out: list[int] = []
    for au, v in zip(DISFA_AUS, values, strict=True):
        iv = int(v)
        if iv != v or not 0 <= iv <= INTENSITY_MAX:
            raise ValueError(f"planned_intensity for AU{au} is {v!r}; must be an integer 0-{INTENSITY_MAX}")
        out.append(iv)
    return out


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _who(rng: random.Random, ethnicity: str | None, age_band: str | None, gender: str | None) -> str:
    nouns = _PERSON_NOUNS.get((age_band or "", gender or ""))
    if not nouns:
        return rng.choice(_GENERIC_SUBJECTS)
    noun = rng.choice(nouns)
    eth = _ETHNICITY_WORDS.get(ethnicity or "")
    if eth is None:
        return _article(noun)
    eth_word = eth[-1] if (ethnicity == "latino" and gender == "female") else eth[0]
    if noun.startswith(("young ", "teenage ", "adolescent ", "middle-aged ", "elderly ", "older ", "adult ")):
        first, rest = noun.split(" ", 1)
        return _article(f"{first} {eth_word} {rest}")
    return _article(f"{eth_word} {noun}")


def _emotion_phrase(rng: random.Random, emotion: str, levels: list[int]) -> str:
    if emotion == "neutral" or emotion not in EMOTION_NOUNS:
        return rng.choice(_NEUTRAL_PHRASES)
    active = [v for v in levels if v > 0]
    mean = sum(active) / len(active) if active else 0.0
    band = "low" if mean <= 1.75 else "mid" if mean <= 3.25 else "high"
    return rng.choice(_EMOTION_STRENGTH[band]).format(e=rng.choice(EMOTION_NOUNS[emotion]))


def _active_phrase(rng: random.Random, au: int, level: int, facs_share: float) -> str:
    if rng.random() < facs_share:
        template = rng.choice(_FACS_TEMPLATES)
        return template.format(a=rng.choice(INTENSITY_ADJECTIVES[level]), name=AU_INFO[au].facs_name, au=au)
    template = rng.choice(AU_ACTIVE_TEMPLATES[au])
    return template.format(a=rng.choice(INTENSITY_ADJECTIVES[level]), d=rng.choice(INTENSITY_ADVERBS[level]))


def _join(rng: random.Random, items: list[str]) -> str:
    """Join list items; the connector style is part of the sentence shape."""
    if len(items) == 1:
        return items[0]
    last_joiners = (", and ", " and ", ", as well as ", ", along with ", ", plus ")
    if len(items) == 2:
        return items[0] + rng.choice((" and ", " as well as ", " along with ", ", plus ")) + items[1]
    return ", ".join(items[:-1]) + rng.choice(last_joiners) + items[-1]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe(
    intensity: Sequence[int],
    emotion: str,
    *,
    seed: int,
    ethnicity: str | None = None,
    age_band: str | None = None,
    gender: str | None = None,
    mention_inactive: float = 0.35,
    facs_share: float = 0.15,
    variant: int = 0,
) -> Description:
    """Describe a planned intensity vector (12 ints 0-5, DISFA order; 0 = inactive).

    ``emotion`` is one of ``manifests.vocab.EMOTIONS``, ``"neutral"`` or ``"mixed"``. Passing
    all three demographic words puts the person in the text; otherwise a generic subject
    ("the person") is used. ``mention_inactive`` is the probability that some inactive AUs
    are mentioned ("still cheeks"); ``facs_share`` the probability that an active AU is
    named by its FACS name and code. ``variant`` picks another text for the same seed.
    """
    levels = validate_intensity(intensity)
    if emotion not in (*EMOTIONS, "neutral", "mixed"):
        raise ValueError(f"emotion {emotion!r} is not one of {[*EMOTIONS, 'neutral', 'mixed']}")
    # A str seed is hashed with SHA-512 by random.seed: stable across processes and runs.
    rng = random.Random(f"{GRAMMAR_VERSION}:{seed}:{variant}")

    active = [au for au, v in zip(DISFA_AUS, levels, strict=True) if v > 0]
    inactive = [au for au, v in zip(DISFA_AUS, levels, strict=True) if v == 0]
    order = rng.random()
    if order < 0.4:
        rng.shuffle(active)  # else top-to-bottom (DISFA order) or bottom-to-top
    elif order < 0.6:
        active.reverse()
    items = [(_active_phrase(rng, au, levels[DISFA_AUS.index(au)], facs_share), "<AU>") for au in active]

    mentioned: list[tuple[str, str]] = []
    if inactive and (not active or rng.random() < mention_inactive):
        k = rng.randint(1, min(3, len(inactive)))
        mentioned = [(rng.choice(AU_INACTIVE_TEMPLATES[au]), "<AU>") for au in rng.sample(inactive, k)]

    who = _who(rng, ethnicity, age_band, gender)
    emo = _emotion_phrase(rng, emotion, levels)

    def render(template: str, parts: dict[str, tuple[str, str]]) -> tuple[str, str]:
        text = shape = template
        for key, (t, s) in parts.items():
            text, shape = text.replace("{" + key + "}", t), shape.replace("{" + key + "}", s)
        return _capitalise(text), _capitalise(shape)

    def joined(pairs: list[tuple[str, str]]) -> tuple[str, str]:
        # The same connector draw for text and shape: re-seed a sub-generator.
        sub_seed = rng.random()
        return (
            _join(random.Random(sub_seed), [t for t, _ in pairs]),
            _join(random.Random(sub_seed), [s for _, s in pairs]),
        )

    base = {"E": (emo, "<E>"), "W": (who, "<W>")}
    if not items:
        parts = {**base, "I": joined(mentioned)}
        text, shape = render(rng.choice(_REST_FRAMES), parts)
        return Description(text, shape)

    sentences: list[tuple[str, str]] = []
    inline = bool(mentioned) and rng.random() < 0.6
    if inline:
        for m in mentioned:  # never first: a frame should open on what the face does
            items.insert(rng.randint(1, len(items)), m)
    split_at = len(items)
    if len(items) >= 3 and rng.random() < 0.3:
        split_at = rng.randint(1, len(items) - 1)
    sentences.append(render(rng.choice(_FRAMES), {**base, "L": joined(items[:split_at])}))
    if split_at < len(items):
        sentences.append(render(rng.choice(_CONTINUATIONS), {"L": joined(items[split_at:])}))
    if mentioned and not inline:
        sentences.append(render(rng.choice(_INACTIVE_SENTENCES), {"I": joined(mentioned)}))
    return Description(" ".join(t for t, _ in sentences), " ".join(s for _, s in sentences))

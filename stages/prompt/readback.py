"""Read a description back into AUs and levels, and score it against the plan.

Works on text from any backend: the grammar's own vocabulary (``stages.prompt.grammar``)
plus the free-text phrasings an LLM tends to use ("raised eyebrows", "smile", "wrinkled
nose", "dropped jaw", "parted lips", "AU12", "lip corner puller", ...).

How a description is read:

1. Normalise (lower case, hyphens to spaces, "n't" to " not").
2. Find every AU cue with the regular expressions below; overlapping cues keep the longest;
   adjacent cues of the same AU ("lip corner puller (AU12)") merge into one mention.
3. Each mention gets a *context*: the text of its clause (clauses end at punctuation and at
   connectives like "and", "with", "while"), cut where a neighbouring mention ends/begins.
   A negation in the context ("no lip stretching", "without a smile", "lips are not
   parted") makes the mention inactive; the intensity word inside the mention, else the
   nearest one before it, else the first one after it, gives the level.
4. An AU is active when it has at least one non-negated mention.

Scores (:func:`check_description`):

- ``jaccard`` = |planned ∩ read| / |planned ∪ read| over the active AU sets; by definition
  1.0 when both sets are empty (a neutral face described as neutral is a perfect match).
- ``intensity_agreement`` = share of AUs active in *both* sets whose read level equals the
  planned level exactly (±0; a mention without a level counts as a mismatch). When no AU is
  active in both: 1.0 if both sets are empty, else 0.0 (nothing was confirmed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from manifests.vocab import AU_INFO, DISFA_AUS
from stages.labels import jaccard
from stages.prompt.grammar import INTENSITY_ADJECTIVES, INTENSITY_ADVERBS, LEVEL_NAMES

__all__ = [
    "INTENSITY_WORDS",
    "ReadBack",
    "check_description",
    "intensity_agreement",
    "mismatch_report",
    "read_back",
]

# Words an LLM uses beyond the grammar's vocabulary; each still maps to one level.
_EXTRA_INTENSITY: dict[str, int] = {
    "very slight": 1,
    "very slightly": 1,
    "very faint": 1,
    "very faintly": 1,
    "barely noticeable": 1,
    "somewhat": 2,
    "gentle": 2,
    "gently": 2,
    "medium": 3,
    "fairly": 3,
    "considerable": 4,
    "considerably": 4,
    "severe": 4,
    "severely": 4,
    "very pronounced": 5,
    "maximum": 5,
    "very intense": 5,
    "very intensely": 5,
    "fully": 5,
}


def _intensity_words() -> dict[str, int]:
    words: dict[str, int] = {}
    for table in (INTENSITY_ADJECTIVES, INTENSITY_ADVERBS):
        for level, ws in table.items():
            for w in ws:
                words[w] = level
    for level, name in LEVEL_NAMES.items():
        words.setdefault(name, level)
    for w, level in _EXTRA_INTENSITY.items():
        words.setdefault(w, level)
    return words


INTENSITY_WORDS: dict[str, int] = _intensity_words()

# Filler allowed between a body part and its verb: "inner brows are slightly raised".
_F = (
    r"(?:(?:is|are|appear|appears|seem|seems|look|looks|being|been|held|remain|remains|"
    r"get|gets|hangs?|falls?|sits?|stays?|a bit|somewhat|very|quite|just|rather|not|never|\w+ly)\s+){0,3}"
)
_BROW = r"(?:eye)?brows?"
_LC = r"(?:(?:lip|mouth) corners?|corners of (?:the |her |his |their )?(?:mouth|lips))"
_LIDS = r"(?:upper )?(?:eye)?lids?"

# AU set -> cue patterns (on normalised text).
_CUES: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    (
        (1,),
        (
            rf"inner {_BROW} rais(?:er|es|e|ing)",
            rf"inner {_BROW} lifts?",
            rf"(?:lift|lifting|raise|raising|elevation) of the inner {_BROW}",
            rf"(?:raised|lifted|elevated|upraised) inner {_BROW}",
            rf"inner {_BROW} {_F}(?:raised|lifted|elevated|drawn up|pulled up|rise|rising)",
            rf"(?:raised|lifted) inner (?:corners|ends|parts) of the {_BROW}",
            rf"inner (?:corners|ends|parts) of the {_BROW} {_F}(?:raised|lifted|drawn up|pulled up)",
        ),
    ),
    (
        (2,),
        (
            rf"outer {_BROW} rais(?:er|es|e|ing)",
            rf"outer {_BROW} lifts?",
            rf"(?:lift|lifting|raise|raising|elevation) of the outer {_BROW}",
            rf"(?:raised|lifted|elevated|arched|upraised) outer {_BROW}",
            rf"outer {_BROW} {_F}(?:raised|lifted|elevated|arched|drawn up|pulled up|rise|rising)",
            rf"(?:raised|lifted) outer (?:corners|ends|parts) of the {_BROW}",
            rf"outer (?:corners|ends|parts) of the {_BROW} {_F}(?:raised|lifted|drawn up|pulled up)",
        ),
    ),
    (
        (1, 2),
        (  # brows raised without saying which part: both AU1 and AU2
            rf"(?:raised|lifted|elevated|arched|upraised) {_BROW}\b",
            rf"(?<!inner )(?<!outer )\b{_BROW} {_F}(?:raised|lifted|elevated|arched|shot up|go up)",
            r"(?<!inner )(?<!outer )\bbrow rais(?:es|e|ing)\b",
            rf"(?:lift|lifting|raise|raising|elevation) of the {_BROW}",
        ),
    ),
    (
        (4,),
        (
            r"brow lower(?:er|ing)?",
            rf"(?:lowered|furrowed|knitted|knit|contracted|creased|drawn down|pulled down) {_BROW}",
            rf"\b{_BROW} {_F}(?:lowered|furrowed|knitted|knit|drawn down|drawn together|pulled down|"
            r"pulled together|lowering|furrowing)",
            r"brow furrows?",
            r"\bfrown(?:s|ing|ed)?\b",
            r"\bscowl(?:s|ing)?\b",
            rf"(?:knitting|lowering|furrowing|drawing together) of the {_BROW}",
        ),
    ),
    (
        (5,),
        (
            rf"upper {_LIDS} rais(?:er|es|e|ing)",
            rf"upper {_LIDS} lifts?",
            rf"{_LIDS} elevation",
            rf"elevation of the {_LIDS}",
            rf"(?:raised|lifted|elevated|retracted) {_LIDS}\b",
            rf"\b{_LIDS} {_F}(?:raised|lifted|elevated|retracted|pulled up|drawn up)",
            r"widen(?:ed|ing)? eyes",
            r"\bwide (?:open )?eyes",
            r"\bwide eyed",
            rf"\beyes {_F}(?:widen(?:ed|ing)?|wide(?: open)?)\b",
            r"widening of the eyes",
        ),
    ),
    (
        (6,),
        (
            r"cheek rais(?:er|es|e|ing)",
            r"cheek lifts?",
            r"(?:raised|lifted|elevated|pushed up) cheeks?",
            rf"\bcheeks? {_F}(?:raised|lifted|pushed up|pulled up|elevated|rise|rising|bunched)",
            r"(?:lifting|raising|lift|raise) of the cheeks?",
            r"crow'?s feet",
        ),
    ),
    (
        (9,),
        (
            r"nose wrinkl(?:er|es|e|ing)",
            r"nose crinkl(?:es|e|ing)",
            r"(?:wrinkled|crinkled|scrunched|creased) (?:up )?nose",
            rf"\bnose {_F}(?:wrinkled|crinkled|scrunched|wrinkles|wrinkling|crinkles|creased)",
            r"(?:wrinkling|crinkling|scrunching) (?:of|up) the nose",
        ),
    ),
    (
        (12,),
        (
            r"lip corner pull(?:er|ing)",
            r"lip corner (?:lift|rais(?:e|ing))s?",
            rf"(?:raised|lifted|upturned|upward|pulled up|drawn up|turned up|curled up) {_LC}",
            rf"\b{_LC} {_F}(?:raised|lifted|upturned|pulled up|drawn up|turned up|curled up|curv(?:e|ing) up|"
            r"turn up|pulled upward|drawn upward|lifted upward|rise|rising)",
            rf"(?:lift|raise|raising|lifting|upward pull|upturn|upward curve) (?:of|at|in) (?:the )?{_LC}",
            r"\bsmil(?:es|e|ing)\b",
            r"\bgrin(?:s|ning)?\b",
        ),
    ),
    (
        (15,),
        (
            r"lip corner (?:depress(?:or|ion|ing)|drop|downturn)s?",
            rf"(?:downturned|down turned|lowered|depressed|drooping|turned down|pulled down|drawn down|"
            rf"downward|sagging) {_LC}",
            rf"\b{_LC} {_F}(?:lowered|depressed|downturned|turned down|pulled down|drawn down|drooping|droop|"
            r"sagging|sag|turn down|pulled downward|drawn downward)",
            rf"(?:downturn|depression|lowering|downward pull|droop) (?:of|at|in) (?:the )?{_LC}",
            r"(?:downturned|down turned) mouth",
        ),
    ),
    (
        (17,),
        (
            r"chin (?:boss )?rais(?:er|es|e|ing)",
            r"chin lifts?",
            r"(?:raised|puckered|wrinkled|dimpled|tensed|pushed up|bunched) chin",
            rf"\bchin {_F}(?:raised|pushed up|puckered|wrinkled|dimpled|bunched|lifted|pushed upward|"
            r"tightened|tensed)",
            r"(?:upward push|raising|raise|lift|push) of the chin",
            rf"lower lip {_F}pushed up",
            r"pushed up lower lip",
        ),
    ),
    (
        (20,),
        (
            r"lip stretch(?:er|es|ing|ed)?",
            r"stretched (?:lips|mouth)",
            rf"\b(?:lips|mouth) {_F}(?:stretched|stretch|stretching)",
            r"(?:stretch|stretching) of the (?:lips|mouth)",
        ),
    ),
    (
        (25,),
        (
            r"\blips? part(?:s|ing|ed)?\b",
            r"lip separation",
            r"(?:parted|separated|open|opened) lips",
            rf"\blips {_F}(?:parted|apart|separated|open|opened|ajar)",
            r"(?:parting|separation|opening) of the lips",
            r"\bopen(?:ed)? mouth",
            rf"\bmouth {_F}(?:open|opened|ajar)\b",
        ),
    ),
    (
        (26,),
        (
            r"\bjaw (?:drops?|release|lowering)",
            r"(?:dropped|lowered|released|slack|slackened|opened|hanging|dropping) jaw",
            rf"\bjaw {_F}(?:dropped|drops|lowered|released|slack|slackened|hangs? open|falls? open|fallen|"
            r"opened|drop)",
            r"(?:lowering|drop|dropping|release|opening) of the jaw",
        ),
    ),
)
# "verb-ing the part" forms: "raising the inner brows", "pulling the lip corners down".
_DET = r"(?:the |her |his |their |its |both )?"
_ACTION_CUES: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    ((1,), (rf"(?:rais|lift)(?:ing|es|e|s)? {_DET}inner {_BROW}",)),
    ((2,), (rf"(?:rais|lift|arch)(?:ing|es|e|s)? {_DET}outer {_BROW}",)),
    ((1, 2), (rf"(?:rais|lift|arch)(?:ing|es|e|s)? {_DET}{_BROW}\b",)),
    ((4,), (rf"(?:lowering|lowers|furrowing|furrows|knitting|knits) {_DET}{_BROW}",)),
    (
        (5,),
        (
            r"widen(?:ing|s)? " + _DET + r"eyes",
            rf"(?:rais|lift)(?:ing|es|e|s)? {_DET}upper {_LIDS}",
        ),
    ),
    ((6,), (rf"(?:rais|lift)(?:ing|es|e|s)? {_DET}cheeks?",)),
    ((9,), (rf"(?:wrinkl|crinkl|scrunch)(?:ing|es|e|s)? (?:up )?{_DET}nose",)),
    (
        (12,),
        (rf"(?:pull|draw|turn|curl)(?:ing|s)? {_DET}{_LC} (?:up|upward)", rf"(?:rais|lift)(?:ing|es|e|s)? {_DET}{_LC}"),
    ),
    (
        (15,),
        (
            rf"(?:pull|draw|turn)(?:ing|s)? {_DET}{_LC} (?:down|downward)",
            rf"(?:lowering|lowers|depressing|depresses) {_DET}{_LC}",
        ),
    ),
    ((17,), (rf"(?:rais|push)(?:ing|es|e|s)? (?:up )?{_DET}chin",)),
    ((20,), (rf"stretch(?:ing|es)? {_DET}(?:lips|mouth)",)),
    ((25,), (rf"(?:part|separat)(?:ing|es|e|s)? {_DET}lips",)),
    # suffix required: "lower jaw" is anatomy, not a movement
    ((26,), (rf"(?:dropping|drops|lowering|lowers|releasing|releases|slackening|slackens) {_DET}jaw",)),
)
_CODE = re.compile(r"\b(?:au\s?|action units? )0?(\d{1,2})\b")

_BOUNDARY = re.compile(
    r"[,;:.!?]|\b(?:and|with|while|whilst|whereas|but|plus|as well as|along with|together with|"
    r"alongside|through|by|via|featuring|in)\b"
)
_NEGATION = re.compile(r"\b(?:no|not|without|never|nor|neither|absent|absence|lack|lacking|free of|none)\b")
_POST_NEGATION = re.compile(r"^\W*(?:(?:is|are)\s+)?(?:absent|not present|missing)\b")
_OR_GAP = re.compile(r"^\s*,?\s*(?:or|nor)\s*$")
_MERGE_GAP = re.compile(r"^[\s()\[\]:,]*$")


@cache
def _compiled() -> tuple[tuple[frozenset[int], re.Pattern[str]], ...]:
    # \b in front: "unfurrowed brows" must not match the cue "furrowed brows".
    return tuple(
        (frozenset(aus), re.compile(r"\b(?:" + "|".join(f"(?:{p})" for p in pats) + ")"))
        for aus, pats in (*_CUES, *_ACTION_CUES)
    )


@cache
def _intensity_regex() -> re.Pattern[str]:
    words = sorted(INTENSITY_WORDS, key=len, reverse=True)  # longest first: "very strong"
    # Numeric levels as an LLM may add them: "level 3", "intensity 4", "2/5".
    numeric = r"(?:level|intensity) (?P<n1>[1-5])\b|\b(?P<n2>[1-5]) ?/ ?5"
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b|" + numeric)


def _level(match: re.Match[str]) -> int:
    digit = match.group("n1") or match.group("n2")
    return int(digit) if digit else INTENSITY_WORDS[match.group(0)]


def _normalise(text: str) -> str:
    text = text.lower().replace("’", "'").replace("n't", " not")
    text = re.sub(r"[-_]+|(?<!\d)/|/(?!\d)", " ", text)  # keep "2/5"
    # "inner and outer brows" is the whole brow: AU1 + AU2, like "raised brows"
    text = re.sub(r"\b(?:inner and outer|outer and inner) ((?:eye)?brows?)", r"\1", text)
    return re.sub(r"\s+", " ", text)


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    aus: frozenset[int]


@dataclass(frozen=True)
class ReadBack:
    """What a description says: active AU -> level (``None`` when no level word was
    found), and the AUs it explicitly says are inactive."""

    levels: dict[int, int | None]
    inactive: frozenset[int]

    @property
    def active(self) -> frozenset[int]:
        return frozenset(self.levels)


def _find_mentions(text: str) -> list[_Mention]:
    found: list[_Mention] = []
    for aus, rx in _compiled():
        found.extend(_Mention(m.start(), m.end(), aus) for m in rx.finditer(text))
    for m in _CODE.finditer(text):
        au = int(m.group(1))
        if au in AU_INFO:
            found.append(_Mention(m.start(), m.end(), frozenset({au})))
    # Overlaps: keep the longest cue ("raised inner brows" over a shorter cue inside it).
    kept: list[_Mention] = []
    for cand in sorted(found, key=lambda c: (c.start - c.end, c.start)):
        if all(cand.end <= k.start or cand.start >= k.end for k in kept):
            kept.append(cand)
    kept.sort(key=lambda c: c.start)
    merged: list[_Mention] = []
    for cand in kept:
        if merged and merged[-1].aus == cand.aus and _MERGE_GAP.match(text[merged[-1].end : cand.start]):
            merged[-1] = _Mention(merged[-1].start, cand.end, cand.aus)
        else:
            merged.append(cand)
    return merged


def read_back(text: str) -> ReadBack:
    """Parse ``text`` into active AUs with levels and explicitly inactive AUs."""
    norm = _normalise(text)
    mentions = _find_mentions(norm)
    boundaries = [(b.start(), b.end()) for b in _BOUNDARY.finditer(norm)]
    intensity_rx = _intensity_regex()

    levels: dict[int, int | None] = {}
    inactive: set[int] = set()
    prev_negated = False
    for i, m in enumerate(mentions):
        prev_end = mentions[i - 1].end if i else 0
        next_start = mentions[i + 1].start if i + 1 < len(mentions) else len(norm)
        seg_start = max((e for s, e in boundaries if e <= m.start), default=0)
        seg_end = min((s for s, e in boundaries if s >= m.end), default=len(norm))
        pre = norm[max(seg_start, prev_end) : m.start]
        inside = norm[m.start : m.end]
        post = norm[m.end : min(seg_end, next_start)]

        negated = bool(_NEGATION.search(pre) or _NEGATION.search(inside) or _POST_NEGATION.match(post))
        if not negated and i and prev_negated and _OR_GAP.match(norm[prev_end : m.start]):
            negated = True  # "no brow lowering or nose wrinkling"
        prev_negated = negated
        if negated:
            inactive.update(m.aus)
            continue

        level: int | None = None
        hits = list(intensity_rx.finditer(inside)) or list(intensity_rx.finditer(pre))
        if hits:
            level = _level(hits[-1])
        else:
            after = intensity_rx.search(post)
            level = _level(after) if after else None
        for au in sorted(m.aus):
            if levels.get(au) is None:
                levels[au] = level
    return ReadBack(
        levels={au: levels[au] for au in DISFA_AUS if au in levels}, inactive=frozenset(inactive - set(levels))
    )


def _active_planned(planned: Sequence[int]) -> dict[int, int]:
    return {au: int(v) for au, v in zip(DISFA_AUS, planned, strict=True) if int(v) > 0}


def intensity_agreement(planned: dict[int, int], read: dict[int, int | None]) -> float:
    """Share of AUs active in both whose read level equals the planned level exactly."""
    both = set(planned) & set(read)
    if not both:
        return 1.0 if not planned and not read else 0.0
    return sum(read[au] == planned[au] for au in both) / len(both)


def check_description(text: str, planned_intensity: Sequence[int]) -> tuple[float, float]:
    """``(jaccard, intensity_agreement)`` of ``text`` against the planned 12-vector
    (DISFA order, 0 = inactive); definitions in the module docstring."""
    planned = _active_planned(planned_intensity)
    rb = read_back(text)
    return jaccard(set(planned), rb.active), intensity_agreement(planned, rb.levels)


def mismatch_report(text: str, planned_intensity: Sequence[int]) -> str:
    """Plain-language list of what ``text`` gets wrong (for LLM feedback and drop reasons);
    empty when the read-back matches the plan exactly."""
    planned = _active_planned(planned_intensity)
    rb = read_back(text)
    problems: list[str] = []
    missing = sorted(set(planned) - rb.active)
    extra = sorted(rb.active - set(planned))
    if missing:
        problems.append("missing " + ", ".join(f"AU{a} ({AU_INFO[a].facs_name})" for a in missing))
    if extra:
        problems.append("not planned but described " + ", ".join(f"AU{a} ({AU_INFO[a].facs_name})" for a in extra))
    wrong = [
        f"AU{a} should be {LEVEL_NAMES[planned[a]]}"
        + (f" not {LEVEL_NAMES[rb.levels[a]]}" if rb.levels[a] else " (no intensity word found)")  # type: ignore[index]
        for a in sorted(set(planned) & rb.active)
        if rb.levels[a] != planned[a]
    ]
    if wrong:
        problems.append("wrong intensity: " + "; ".join(wrong))
    return "; ".join(problems)

"""The FineFace prompt: a recipe template filled from the record's description and demographics.

Slots: ``{description}`` (the prompt stage's text), ``{person}`` (e.g. "a young East Asian
woman", "an elderly Black man", "a Latina girl"), ``{age}``, ``{ethnicity}``, ``{gender}``
(single words or short phrases). A record without a demographic field gets a neutral word
("person", empty ethnicity), so a bank-less, demographics-free plan still prompts well.
Put ``{person}`` early in the template: CLIP reads 77 tokens and cuts the rest.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

__all__ = ["AGE_WORDS", "ETHNICITY_WORDS", "GENDER_WORDS", "SLOTS", "build_prompt", "check_template", "person_phrase"]

SLOTS = ("description", "person", "age", "ethnicity", "gender")

AGE_WORDS = {
    "child": "child",
    "teen": "teenage",
    "young_adult": "young adult",
    "adult": "adult",
    "middle_aged": "middle-aged",
    "elderly": "elderly",
}
ETHNICITY_WORDS = {
    "east_asian": "East Asian",
    "south_asian": "South Asian",
    "black": "Black",
    "white": "White",
    "middle_eastern": "Middle Eastern",
    "latino": "Latino",
}
GENDER_WORDS = {"female": "female", "male": "male"}
# (age band, gender) -> (adjective before the ethnicity, noun after it)
_NOUNS = {
    ("child", "female"): ("", "girl"),
    ("child", "male"): ("", "boy"),
    ("teen", "female"): ("teenage", "girl"),
    ("teen", "male"): ("teenage", "boy"),
    ("young_adult", "female"): ("young", "woman"),
    ("young_adult", "male"): ("young", "man"),
    ("adult", "female"): ("", "woman"),
    ("adult", "male"): ("", "man"),
    ("middle_aged", "female"): ("middle-aged", "woman"),
    ("middle_aged", "male"): ("middle-aged", "man"),
    ("elderly", "female"): ("elderly", "woman"),
    ("elderly", "male"): ("elderly", "man"),
}


def check_template(template: str) -> str:
    """``template`` if it uses only :data:`SLOTS` (and at least ``{description}``), else ValueError."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc})") from exc
    unknown = sorted({f for f in fields if f not in SLOTS})
    if unknown:
        raise ValueError(f"unknown slot(s) {', '.join('{' + u + '}' for u in unknown)}; allowed: {list(SLOTS)}")
    if "description" not in fields:
        raise ValueError("must contain '{description}'")
    return template


def _ethnicity(record: Mapping[str, Any]) -> str:
    word = ETHNICITY_WORDS.get(str(record.get("ethnicity") or ""), "")
    return "Latina" if word == "Latino" and record.get("gender") == "female" else word


def person_phrase(record: Mapping[str, Any]) -> str:
    """ "a young East Asian woman"; "a person" when age band or gender is unknown."""
    adjective, noun = _NOUNS.get((str(record.get("age_band") or ""), str(record.get("gender") or "")), ("", "person"))
    words = " ".join(w for w in (adjective, _ethnicity(record), noun) if w)
    return ("an " if words[0].lower() in "aeiou" else "a ") + words


def build_prompt(template: str, record: Mapping[str, Any]) -> str:
    return template.format(
        description=record.get("description") or "",
        person=person_phrase(record),
        age=AGE_WORDS.get(str(record.get("age_band") or ""), ""),
        ethnicity=_ethnicity(record),
        gender=GENDER_WORDS.get(str(record.get("gender") or ""), ""),
    ).strip()

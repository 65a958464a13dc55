"""The vocabulary every part of the factory shares: AUs, emotions, demographic groups.

Labels are always vectors in ``DISFA_AUS`` order: index ``i`` is AU ``DISFA_AUS[i]``.
Intensity is the FACS A-E scale mapped to 1-5, with 0 meaning "not active".
Uncertain (no detector consensus) is ``-1``; an AU a detector does not cover is ``None``
/ null, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AGE_BANDS",
    "AU_INDEX",
    "AU_INFO",
    "DISFA_AUS",
    "EMOTIONS",
    "EMOTION_MIX_KEYS",
    "ETHNICITIES",
    "GENDERS",
    "INTENSITY_LEVELS",
    "INTENSITY_MAX",
    "UNCERTAIN",
    "AUInfo",
    "au_column",
]

DISFA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
AU_INDEX: dict[int, int] = {au: i for i, au in enumerate(DISFA_AUS)}
INTENSITY_MAX = 5
INTENSITY_LEVELS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
UNCERTAIN = -1

# The 7 primary emotions of the MIFA dataset (paper section 3.1).
EMOTIONS: tuple[str, ...] = (
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "anger",
    "disgust",
    "contempt",
)
# The 7 emotions with EMFACS prototypes, plus a neutral face and non-prototypical mixes.
EMOTION_MIX_KEYS: tuple[str, ...] = (*EMOTIONS, "neutral", "mixed")

# The 6 ethnic groups of MIFA (paper section 3.1 "6 major ethnic groups"; FairFace's
# groupings with Southeast and East Asian merged).
ETHNICITIES: tuple[str, ...] = ("east_asian", "south_asian", "black", "white", "middle_eastern", "latino")
# "Ages ranging from children to the elderly" (paper section 3.1).
AGE_BANDS: tuple[str, ...] = ("child", "teen", "young_adult", "adult", "middle_aged", "elderly")
GENDERS: tuple[str, ...] = ("female", "male")


@dataclass(frozen=True)
class AUInfo:
    au: int
    facs_name: str  # FACS manual name (Ekman, Friesen & Hager 2002)
    muscle: str  # main muscular basis
    region: str  # "brow", "eye", "nose", "cheek", "mouth", "chin", "jaw"


AU_INFO: dict[int, AUInfo] = {
    1: AUInfo(1, "inner brow raiser", "frontalis, pars medialis", "brow"),
    2: AUInfo(2, "outer brow raiser", "frontalis, pars lateralis", "brow"),
    4: AUInfo(4, "brow lowerer", "corrugator supercilii, depressor supercilii", "brow"),
    5: AUInfo(5, "upper lid raiser", "levator palpebrae superioris", "eye"),
    6: AUInfo(6, "cheek raiser", "orbicularis oculi, pars orbitalis", "cheek"),
    9: AUInfo(9, "nose wrinkler", "levator labii superioris alaeque nasi", "nose"),
    12: AUInfo(12, "lip corner puller", "zygomaticus major", "mouth"),
    15: AUInfo(15, "lip corner depressor", "depressor anguli oris", "mouth"),
    17: AUInfo(17, "chin raiser", "mentalis", "chin"),
    20: AUInfo(20, "lip stretcher", "risorius with platysma", "mouth"),
    25: AUInfo(25, "lips part", "depressor labii inferioris / relaxed mentalis", "mouth"),
    26: AUInfo(26, "jaw drop", "masseter relaxed; temporalis, internal pterygoid", "jaw"),
}


def au_column(au: int) -> str:
    """Column-name form of an AU, e.g. ``AU04``."""
    return f"AU{au:02d}"

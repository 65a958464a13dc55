"""Which AU vectors the planner may draw: EMFACS emotion prototypes on the 12 DISFA AUs and
the anatomical constraints every planned vector obeys (data tables with their sources, and
the two pure functions that apply them)."""

from __future__ import annotations

import numpy as np

from manifests.vocab import AU_INDEX

__all__ = ["CONSTRAINTS", "EMFACS_PROTOTYPES", "apply_constraints", "fold_expression"]

# --- EMFACS prototypes on the 12 DISFA AUs -------------------------------------------
# (required AUs, optional AUs drawn with p = 0.5, max intensity for the emotion's AUs)
# Sources: Friesen & Ekman (1983) EMFACS-7; Ekman, Friesen & Hager (2002) FACS Investigator's
# Guide, Table 10-1 (prototypes and major variants); Du, Tao & Martinez (2014) PNAS 111(15)
# "Compound facial expressions of emotion", Table 1. AUs outside the DISFA 12 (7, 14, 16, 23,
# 24) are left out, so anger and contempt keep only their DISFA-visible part.
EMFACS_PROTOTYPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "happiness": ((6, 12), (25,), 5),  # 6+12 (Duchenne smile), often lips part
    "sadness": ((1, 4, 15), (17,), 5),  # 1+4+15, variant with 17
    "surprise": ((1, 2, 5, 26), (), 5),  # 1+2+5B+26 (25 follows from 26, see CONSTRAINTS)
    "fear": ((1, 2, 4, 5, 20, 26), (), 5),  # 1+2+4+5+7+20+26 without 7
    "anger": ((4, 5), (17,), 5),  # 4+5+7+23 without 7/23; 4+5+17 variant
    "disgust": ((9, 15), (17, 25), 5),  # 9+15+16 without 16; 9+17 variant
    "contempt": ((12,), (), 2),  # R12A+R14A: unilateral, weak 12 (14 not in DISFA)
    "neutral": ((), (), 0),
}

# --- Anatomical plausibility constraints ----------------------------------------------
# Applied in this order to every planned vector (prototypes and mixes alike).
# 1. AU26 => AU25: a dropped jaw parts the lips (FACS 2002 ch. 8, "26 always scored with 25
#    unless lips are held together by 24"); DISFA codes 26 with 25 in practice.
# 2. AU12 and AU15 not both >= 3: zygomaticus major pulls the lip corners up, depressor
#    anguli oris pulls them down; both strong is not a producible configuration
#    (FACS 2002 ch. 6 on 12+15). The weaker (tie: 15) is capped at 2.
# 3. AU17 and AU26 not both >= 3: mentalis pushes the lower lip and chin up while the jaw
#    drops; strong 17 needs a closed jaw (FACS 2002 ch. 8). Weaker (tie: 17) capped at 2.
# 4. AU2 and AU4 not both >= 4: lateral frontalis raises the outer brow while corrugator and
#    depressor supercilii pull the brows down; both extreme is not producible (fear's 1+2+4
#    shows them moderate). Weaker (tie: 2) capped at 3.
# 5. AU5 and AU6 not both >= 4: orbicularis oculi (pars orbitalis) narrows the eye opening
#    that levator palpebrae widens. Weaker (tie: 5) capped at 3.
CONSTRAINTS: tuple[tuple[str, int, int, int], ...] = (
    # (kind, au_a, au_b, limit)
    ("implies", 26, 25, 0),
    ("not_both_above", 12, 15, 2),
    ("not_both_above", 26, 17, 2),
    ("not_both_above", 4, 2, 3),
    ("not_both_above", 6, 5, 3),
)


def apply_constraints(v: np.ndarray) -> np.ndarray:
    """Apply :data:`CONSTRAINTS` to intensity vectors ``(n, 12)`` (returns a new array).

    ``implies a b``: where a > 0 and b == 0, b takes a's intensity.
    ``not_both_above a b limit``: where both exceed ``limit``, the weaker is capped at
    ``limit`` (on a tie, ``b`` is capped).
    """
    out = np.array(v, dtype=np.int8, copy=True)
    for kind, au_a, au_b, limit in CONSTRAINTS:
        a, b = out[:, AU_INDEX[au_a]], out[:, AU_INDEX[au_b]]
        if kind == "implies":
            fix = (a > 0) & (b == 0)
            b[fix] = a[fix]
        else:
            both = (a > limit) & (b > limit)
            cap_b = both & (b <= a)
            cap_a = both & (a < b)
            b[cap_b] = limit
            a[cap_a] = limit
    return out


def fold_expression(planned: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``planned`` with an exemplar's ``own`` AUs folded in: each AU at least its own level;
    where that breaks a :data:`CONSTRAINTS` pair the planned partner is capped, never the
    photo's own AU."""
    out = np.maximum(planned, own).astype(np.int8)
    for kind, au_a, au_b, limit in CONSTRAINTS:
        a, b = AU_INDEX[au_a], AU_INDEX[au_b]
        if kind != "implies" and out[a] > limit and out[b] > limit and (own[a] > limit) != (own[b] > limit):
            out[b if own[a] > limit else a] = limit
    return apply_constraints(out[None])[0]

"""Cross-detector agreement: consensus AU labels from several detectors' votes.

Per AU, over the detectors whose vote covers it (occurrence not ``None``):

- each detector decides active when its occurrence probability is >= 0.5;
- the consensus is active (1) when at least ``k`` of them say active, inactive (0) when at
  least ``k`` say inactive, else uncertain (-1), where ``k = max(min_agree, n // 2 + 1)``
  (a strict majority of the ``n`` covering detectors and never fewer than ``min_agree``;
  default 2, so one detector alone never makes a label; ``min_agree = 1`` is allowed for
  single-detector setups). An AU no detector covers is uncertain;
- intensity: for an inactive consensus 0; for an active one the median of the intensities
  of the detectors that voted active and report an intensity, provided their spread
  (max - min) is <= ``intensity_tolerance``, else -1 (also -1 when none reports one).

``agreement_score`` is the mean, over the AUs at least one detector covers, of the share of
covering detectors that side with the majority decision for that AU (a tie counts 0.5);
1.0 means every detector agreed on every AU it covers. ``None`` when no AU is covered.

Final labels (``labels`` option): ``generator`` takes the generator's labels
(``generator_occurrence >= 0.5`` and ``generator_intensity`` rounded half up);
``consensus`` takes the consensus (``label_source = "consensus"``; uncertain stays -1; an
active AU's intensity is at least 1 so that the two label vectors never contradict);
``auto`` uses the generator labels when ``label_source`` is ``exact`` or ``decoded`` and
the consensus otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from manifests.vocab import DISFA_AUS, UNCERTAIN
from stages.base import Kind, Record, Stage, StageConfig, StageError

__all__ = [
    "AgreementConfig",
    "AgreementStage",
    "Consensus",
    "consensus",
    "final_labels",
    "votes_list",
]

N = len(DISFA_AUS)
Consensus = dict[str, Any]


class AgreementConfig(StageConfig):
    min_agree: int = Field(2, ge=1, le=32, description="least detectors that must agree on an AU")
    intensity_tolerance: float = Field(
        1.0, ge=0.0, le=5.0, description="largest max-min spread of intensities that still gives a median"
    )
    labels: Literal["auto", "generator", "consensus"] = "auto"


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def consensus(
    votes: Mapping[str, Mapping[str, Sequence[float | None]]],
    min_agree: int = 2,
    intensity_tolerance: float = 1.0,
) -> Consensus:
    """Pure: detector votes -> ``{"occurrence": [12 int], "intensity": [12 float], "score"}``."""
    occurrence = [UNCERTAIN] * N
    intensity = [float(UNCERTAIN)] * N
    shares: list[float] = []
    for i in range(N):
        decisions: list[tuple[bool, float | None]] = []
        for vote in votes.values():
            p = vote["occurrence"][i]
            if p is None or (isinstance(p, float) and math.isnan(p)):
                continue
            inten = vote["intensity"][i]
            if inten is not None and math.isnan(inten):
                inten = None
            decisions.append((p >= 0.5, inten))
        n = len(decisions)
        if n == 0:
            continue
        n_active = sum(active for active, _ in decisions)
        n_inactive = n - n_active
        shares.append(max(n_active, n_inactive) / n if n_active != n_inactive else 0.5)
        k = max(min_agree, n // 2 + 1)
        if n_active >= k:
            occurrence[i] = 1
            levels = [v for active, v in decisions if active and v is not None]
            if levels and max(levels) - min(levels) <= intensity_tolerance:
                intensity[i] = float(np.median(levels))
        elif n_inactive >= k:
            occurrence[i] = 0
            intensity[i] = 0.0
    return {
        "occurrence": occurrence,
        "intensity": intensity,
        "score": float(np.mean(shares)) if shares else None,
    }


def votes_list(votes: Mapping[str, Mapping[str, Sequence[float | None]]]) -> list[dict[str, Any]]:
    """``detector_votes`` as the manifest's ``votes`` column, sorted by detector."""
    return [
        {"detector": name, "occurrence": list(v["occurrence"]), "intensity": list(v["intensity"])}
        for name, v in sorted(votes.items())
    ]


def _generator_labels(record: Record) -> tuple[list[int], list[int]]:
    occ = record.get("generator_occurrence")
    if occ is None or len(occ) != N:
        raise StageError(
            f"record {record.get('key')!r} has no 12-value generator_occurrence but the agreement stage "
            "was asked for generator labels; set agreement.labels = 'consensus' or use a generator "
            "that reports labels"
        )
    inten = record.get("generator_intensity")
    occurrence = [1 if (p is not None and p >= 0.5) else 0 for p in occ]
    if inten is None:
        intensity = [UNCERTAIN if o else 0 for o in occurrence]
    else:
        intensity = [_round_half_up(float(v)) if v is not None else UNCERTAIN for v in inten]
    return occurrence, intensity


def _consensus_labels(result: Consensus) -> tuple[list[int], list[int]]:
    occurrence = list(result["occurrence"])
    intensity: list[int] = []
    for o, v in zip(occurrence, result["intensity"], strict=True):
        if o == UNCERTAIN or v < 0:
            intensity.append(UNCERTAIN)
        elif o == 0:
            intensity.append(0)
        else:
            intensity.append(max(1, _round_half_up(v)))
    return occurrence, intensity


def final_labels(record: Record, result: Consensus, labels: str) -> tuple[list[int], list[int], str]:
    """``(au_occurrence, au_intensity, label_source)`` for one record under the ``labels`` rule."""
    source = record.get("label_source")
    use_generator = labels == "generator" or (labels == "auto" and source in ("exact", "decoded"))
    if use_generator:
        occ, inten = _generator_labels(record)
        return occ, inten, source
    occ, inten = _consensus_labels(result)
    return occ, inten, "consensus"


class AgreementStage(Stage[AgreementConfig]):
    """Writes the votes, the consensus and the final labels; never drops a record (an AU the
    detectors cannot decide stays uncertain, and the filters judge the sample)."""

    name: ClassVar[str] = "agreement"
    licence = "Apache-2.0 (this code; no model)"
    kind: ClassVar[Kind] = "agreement"
    reads = frozenset({"label_source", "generator_occurrence", "generator_intensity"})
    optional_reads = frozenset({"detector_votes"})  # no detector: every AU stays uncertain
    writes = frozenset(
        {
            "votes",
            "consensus_occurrence",
            "consensus_intensity",
            "agreement_score",
            "au_occurrence",
            "au_intensity",
            "label_source",
        }
    )

    def run_record(self, record: Record) -> str | None:
        cfg = self.config
        votes = record.get("detector_votes") or {}
        result = consensus(votes, cfg.min_agree, cfg.intensity_tolerance)
        record["votes"] = votes_list(votes)
        record["consensus_occurrence"] = result["occurrence"]
        record["consensus_intensity"] = result["intensity"]
        record["agreement_score"] = result["score"]
        occ, inten, source = final_labels(record, result, cfg.labels)
        record["au_occurrence"], record["au_intensity"] = occ, inten
        record["label_source"] = source
        return None

"""Identity bank: the exemplar faces generation is conditioned on.

A bank is a folder with ``identities.csv`` (or ``identities.parquet``) whose columns are
``identity_id, image, ethnicity, age_band, gender, source, licence`` (``image`` relative
to the folder) and, optionally, ``expression``. ``builtin`` is the embedded default:
public-domain portraits that ship inside installed packages, read from the package at run
time (nothing is committed). ``none`` means no bank: text-to-image generators invent a new
identity per sample.

``expression`` is what the exemplar photo itself shows: ``neutral``, or the AUs it holds as
``AU12=3 AU25=5`` (DISFA AUs, intensity 1-5; measured in population mode, see
``factory identities index``); empty means not recorded. A bank built by the factory
(``--format identity-bank``) records ``neutral`` for every portrait, since its filters kept
only neutral ones. The planner folds a non-neutral exemplar's AUs into every plan of that
identity, so labels, emotion and description describe the face that is shown.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from manifests.errors import UserError
from manifests.vocab import AGE_BANDS, DISFA_AUS, ETHNICITIES, GENDERS

__all__ = [
    "BANK_COLUMNS",
    "NEUTRAL",
    "OPTIONAL_COLUMNS",
    "IdentityBank",
    "IdentityBankError",
    "IdentityRecord",
    "format_expression",
    "open_bank",
    "parse_expression",
]

BANK_COLUMNS = ("identity_id", "image", "ethnicity", "age_band", "gender", "source", "licence")
OPTIONAL_COLUMNS = ("expression",)
NEUTRAL = "neutral"
_EXPRESSION_ITEM = re.compile(r"^AU(\d+)=([1-5])$")


class IdentityBankError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class IdentityRecord:
    identity_id: str
    image: str  # path (folder banks) or "pkg:<name>" (builtin)
    ethnicity: str
    age_band: str
    gender: str
    source: str
    licence: str
    expression: str = ""  # "neutral", "AU12=3 AU25=5" (the photo's own AUs), or "" (not recorded)

    def own_intensity(self) -> tuple[int, ...] | None:
        """The exemplar's own AU intensities in DISFA order, or ``None`` when not recorded."""
        return parse_expression(self.expression) if self.expression else None


def parse_expression(text: str) -> tuple[int, ...]:
    """``"neutral"`` or ``"AU12=3 AU25=5"`` -> 12 intensities in DISFA order; ValueError if malformed."""
    out = [0] * len(DISFA_AUS)
    if text.strip() == NEUTRAL:
        return tuple(out)
    for item in text.split():
        match = _EXPRESSION_ITEM.match(item)
        if match is None or int(match[1]) not in DISFA_AUS:
            raise ValueError(
                f"expression {text!r}: {item!r} is not AU<n>=<1-5> for a DISFA AU {list(DISFA_AUS)}; "
                f"write e.g. 'AU12=3 AU25=5' or '{NEUTRAL}'"
            )
        out[DISFA_AUS.index(int(match[1]))] = int(match[2])
    if not any(out):
        raise ValueError(f"expression {text!r} names no AU; write e.g. 'AU12=3 AU25=5' or '{NEUTRAL}'")
    return tuple(out)


def format_expression(intensity: Sequence[int]) -> str:
    """12 intensities in DISFA order -> ``"AU12=3 AU25=5"``, or ``"neutral"`` when all are 0."""
    items = [f"AU{au}={int(v)}" for au, v in zip(DISFA_AUS, intensity, strict=True) if int(v) > 0]
    return " ".join(items) or NEUTRAL


def _astronaut() -> np.ndarray:
    from skimage import data  # deferred: scikit-image is in the optional [faces] extra

    return np.asarray(data.astronaut())


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook  # deferred: matplotlib ships the portrait; needed only to read it

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


# Public-domain portraits shipped by installed packages. Licences checked: the astronaut
# photo is NASA's (US federal work, public domain; scikit-image data/README); Grace
# Hopper's portrait is a US Navy photo (public domain; matplotlib sample_data/README).
_BUILTIN: dict[str, tuple[IdentityRecord, object]] = {
    "builtin-astronaut": (
        IdentityRecord(
            "builtin-astronaut",
            "pkg:skimage.data.astronaut",
            "white",
            "adult",
            "female",
            "scikit-image: skimage.data.astronaut() (Eileen Collins, NASA)",
            "public-domain",
            # She smiles with parted lips: population mode reads AU12 3.4 and AU25 8.4 (beyond
            # the scale, so 5); tests/manifests/test_bank.py keeps this in step with it.
            "AU12=3 AU25=5",
        ),
        _astronaut,
    ),
    "builtin-grace-hopper": (
        IdentityRecord(
            "builtin-grace-hopper",
            "pkg:matplotlib/grace_hopper.jpg",
            "white",
            "elderly",
            "female",
            "matplotlib sample data: grace_hopper.jpg (US Navy)",
            "public-domain",
            NEUTRAL,
        ),
        _grace_hopper,
    ),
}


class IdentityBank:
    """Read-only view of a bank's metadata and images."""

    def __init__(self, spec: str, root: Path | None, records: list[IdentityRecord]) -> None:
        self.spec = spec
        self.root = root
        self._records = records
        self._by_id = {r.identity_id: r for r in records}

    def records(self) -> list[IdentityRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def get(self, identity_id: str) -> IdentityRecord:
        try:
            return self._by_id[identity_id]
        except KeyError:
            raise IdentityBankError(f"identity {identity_id!r} is not in bank {self.spec!r}") from None

    def image(self, identity_id: str) -> np.ndarray:
        """The identity's exemplar as uint8 RGB ``(H, W, 3)``."""
        rec = self.get(identity_id)
        if rec.image.startswith("pkg:"):
            loader = _BUILTIN[identity_id][1]
            return loader()  # type: ignore[operator]
        path = Path(rec.image) if self.root is None else self.root / rec.image
        try:
            return np.asarray(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as exc:
            raise IdentityBankError(f"identity image {path} cannot be read ({exc}); replace or remove it") from exc

    @cached_property
    def fingerprint(self) -> str:
        blob = json.dumps([asdict(r) for r in self._records], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _read_table(folder: Path) -> list[dict[str, str]]:
    csv_path, pq_path = folder / "identities.csv", folder / "identities.parquet"
    if csv_path.is_file():
        with csv_path.open(newline="") as f:
            return list(csv.DictReader(f))
    if pq_path.is_file():
        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in pq.read_table(pq_path).to_pylist()]
    raise IdentityBankError(
        f"identity bank {folder} has no identities.csv or identities.parquet; "
        f"add one with columns {', '.join(BANK_COLUMNS)}"
    )


def open_bank(spec: str) -> IdentityBank | None:
    """Open ``builtin``, ``none`` (returns ``None``) or a bank folder."""
    if spec == "none":
        return None
    if spec == "builtin":
        return IdentityBank("builtin", None, [rec for rec, _ in _BUILTIN.values()])
    folder = Path(spec)
    if not folder.is_dir():
        raise IdentityBankError(
            f"identity bank folder {folder} does not exist; set identities.bank "
            "to 'builtin', 'none' or an existing folder"
        )
    rows = _read_table(folder)
    records: list[IdentityRecord] = []
    allowed = {"ethnicity": ETHNICITIES, "age_band": AGE_BANDS, "gender": GENDERS}
    for n, row in enumerate(rows, start=2):
        missing = [c for c in BANK_COLUMNS if not row.get(c)]
        if missing:
            raise IdentityBankError(f"{folder}/identities.*: row {n} lacks {', '.join(missing)}")
        for col, values in allowed.items():
            if row[col] not in values:
                raise IdentityBankError(f"{folder}/identities.*: row {n}: {col}={row[col]!r}; allowed: {list(values)}")
        expression = (row.get("expression") or "").strip()
        if expression:
            try:
                parse_expression(expression)
            except ValueError as exc:
                raise IdentityBankError(f"{folder}/identities.*: row {n}: {exc}") from None
        records.append(IdentityRecord(**{c: row[c] for c in BANK_COLUMNS}, expression=expression))
    if not records:
        raise IdentityBankError(f"identity bank {folder} lists no identities")
    ids = [r.identity_id for r in records]
    if len(set(ids)) != len(ids):
        raise IdentityBankError(f"identity bank {folder}: identity_id values must be unique")
    return IdentityBank(str(folder), folder, records)

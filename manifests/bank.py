"""Identity bank: the exemplar faces generation is conditioned on.

A bank is a folder with ``identities.csv`` (or ``identities.parquet``) whose columns are
``identity_id, image, ethnicity, age_band, gender, source, licence`` (``image`` relative
to the folder). ``builtin`` is the embedded default: public-domain portraits that ship
inside installed packages, read from the package at run time (nothing is committed).
``none`` means no bank: text-to-image generators invent a new identity per sample.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from manifests.vocab import AGE_BANDS, ETHNICITIES, GENDERS

__all__ = ["BANK_COLUMNS", "IdentityBank", "IdentityBankError", "IdentityRecord", "open_bank"]

BANK_COLUMNS = ("identity_id", "image", "ethnicity", "age_band", "gender", "source", "licence")


class IdentityBankError(ValueError):
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
        return [{k: str(v) for k, v in row.items()} for row in pq.read_table(pq_path).to_pylist()]
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
        records.append(IdentityRecord(**{c: row[c] for c in BANK_COLUMNS}))
    if not records:
        raise IdentityBankError(f"identity bank {folder} lists no identities")
    ids = [r.identity_id for r in records]
    if len(set(ids)) != len(ids):
        raise IdentityBankError(f"identity bank {folder}: identity_id values must be unique")
    return IdentityBank(str(folder), folder, records)

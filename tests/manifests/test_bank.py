"""Identity bank metadata: the optional ``expression`` column and the builtin portraits' own AUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from manifests.bank import NEUTRAL, IdentityBankError, format_expression, open_bank, parse_expression
from manifests.vocab import AU_INDEX
from stages.detectors.population import own_expression
from stages.faces.exemplar import exemplar_face


def test_builtin_metadata_matches_population_mode() -> None:
    """The builtin rows record what population mode measures on the photos themselves."""
    bank = open_bank("builtin")
    for record in bank.records():
        measured = own_expression(exemplar_face(bank.image(record.identity_id)).landmarks)
        assert record.expression == format_expression(measured), record.identity_id
    assert bank.get("builtin-astronaut").expression == "AU12=3 AU25=5"
    assert bank.get("builtin-grace-hopper").expression == NEUTRAL


def test_expression_round_trip_and_errors() -> None:
    own = parse_expression("AU12=3 AU25=5")
    assert own[AU_INDEX[12]] == 3 and own[AU_INDEX[25]] == 5 and sum(own) == 8
    assert format_expression(own) == "AU12=3 AU25=5"
    assert parse_expression(NEUTRAL) == (0,) * 12 and format_expression((0,) * 12) == NEUTRAL
    for bad in ("AU7=2", "AU12=6", "smiling", "AU12"):
        with pytest.raises(ValueError, match="AU12=3 AU25=5"):
            parse_expression(bad)


def _bank(folder: Path, expression: str | None) -> Path:
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    header = "identity_id,image,ethnicity,age_band,gender,source,licence"
    row = "a,a.png,black,child,female,test,CC0"
    if expression is not None:
        header, row = header + ",expression", row + f",{expression}"
    (folder / "identities.csv").write_text(f"{header}\n{row}\n")
    return folder


def test_folder_bank_expression_column_is_optional_and_checked(tmp_path: Path) -> None:
    assert open_bank(str(_bank(tmp_path / "old", None))).get("a").own_intensity() is None
    assert open_bank(str(_bank(tmp_path / "neutral", NEUTRAL))).get("a").own_intensity() == (0,) * 12
    smiling = open_bank(str(_bank(tmp_path / "smiling", "AU12=2"))).get("a").own_intensity()
    assert smiling is not None and smiling[AU_INDEX[12]] == 2
    with pytest.raises(IdentityBankError, match="row 2"):
        open_bank(str(_bank(tmp_path / "bad", "AU99=1")))

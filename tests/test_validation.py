"""The validation table (docs/validation.md, framework/validation.py): each row's model number stays inside
its tolerance of the published measurement, or, for a row marked outside, stays outside until the row is
updated; and the document is current."""

from pathlib import Path

import pytest

from mmnsim.validation import ROWS, doc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def values() -> dict[str, float]:
    return {r.name: r.model() for r in ROWS}


def test_at_least_eight_rows():
    assert len(ROWS) >= 8


@pytest.mark.parametrize("row", ROWS, ids=[f"row{i}" for i in range(1, len(ROWS) + 1)])
def test_row_within_tolerance(row, values):
    value = values[row.name]
    if row.known_outside():
        assert not row.inside(value), f"{row.name}: now inside its tolerance ({value:g}); mark it inside"
    else:
        assert row.inside(value), (
            f"{row.name}: model {value:g} {row.unit} outside [{row.low / row.tolerance:g}, "
            f"{row.high * row.tolerance:g}] (published {row.low:g}-{row.high:g})"
        )


def test_docs_validation_is_current(values):
    text = (ROOT / "docs" / "validation.md").read_text()
    assert text == doc(values), "regenerate: python -m mmnsim.validation > docs/validation.md"

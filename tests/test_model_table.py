"""The README's model table cannot drift from the registry metadata (parameter columns)."""

from __future__ import annotations

import re
from pathlib import Path

from models import list_models, model_info

README = Path(__file__).resolve().parent.parent / "README.md"
SIZES = ("xs", "s", "m", "l")


def _table_rows() -> dict[str, list[str]]:
    text = README.read_text()
    block = text.split("<!-- model-table:start -->", 1)[1].split("<!-- model-table:end -->", 1)[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:6]
    return rows


def _expected(num_params: int | None) -> str:
    return "?" if num_params is None else f"{num_params / 1e6:.2f}M"


def test_every_registered_model_is_in_the_readme_table_with_its_parameter_count() -> None:
    rows = _table_rows()
    for name in list_models():
        match = re.match(r"^(.+)_(xs|s|m|l)$", name)
        family, column = (match[1], SIZES.index(match[2])) if match else (name, 4)
        assert family in rows, f"{family} missing from the README model table"
        assert rows[family][column] == _expected(model_info(name).num_params), name


def test_the_table_lists_no_model_that_is_not_registered() -> None:
    registered = {re.sub(r"_(xs|s|m|l)$", "", n) for n in list_models()}
    assert set(_table_rows()) == registered

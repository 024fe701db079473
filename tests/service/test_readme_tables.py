"""The README's settings and metrics tables say what the code does: every row, name, default and label."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from service.__main__ import SECRET_FIELDS
from service.metrics import Metrics
from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
CODE = re.compile(r"`([^`]*)`")


def table(heading: str) -> list[list[str]]:
    """The cells of the first Markdown table under ``heading``, header and separator left out."""
    lines = README.read_text().splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def first_code(cell: str) -> str:
    """The first ``code`` span of a cell (every cell this is asked about has one)."""
    match = CODE.search(cell)
    assert match is not None, f"no code span in {cell!r}"
    return match.group(1)


def documented_default(value: Any) -> str:
    """How the README writes a setting's default."""
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_settings_table_lists_every_setting_with_its_option_and_default() -> None:
    rows = {first_code(row[0]): row for row in table("### Settings")}
    expected = {f"SERVE_{name.upper()}": (name, field) for name, field in Settings.model_fields.items()}
    assert sorted(rows) == sorted(expected)  # no setting missing, none that does not exist
    for env, (name, field) in expected.items():
        _, option, default, _ = rows[env]
        if name in SECRET_FIELDS:
            assert option == "environment only", env
        else:
            assert first_code(option) == "--" + name.replace("_", "-"), env
        written = first_code(default) if "`" in default else default
        assert written == documented_default(field.default), env


def _families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, labels) of every metric the service defines (not the process collectors)."""
    metrics = Metrics(registry=None)
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for attribute in vars(metrics).values():
        name = getattr(attribute, "_name", None)
        if name is None:
            continue
        kind = attribute._type
        full = f"{name}_total" if kind == "counter" else name
        found[full] = (kind, tuple(attribute._labelnames))
    return found


def test_the_metrics_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = {first_code(row[0]): row for row in table("### Metrics")}
    families = _families()
    assert sorted(rows) == sorted(families)
    for name, (kind, labels) in families.items():
        _, written_kind, written_labels, _ = rows[name]
        assert written_kind.split()[0] == kind, name
        names = tuple(re.sub(r"\(.*?\)", "", written_labels).replace(",", " ").split())
        assert names == labels, name

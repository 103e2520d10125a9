"""config/poller.example.toml documents every key, with its real default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from poller.settings import PartnerSettings, Settings, load_config, parse_duration

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "poller.example.toml"


def documented_keys() -> set[str]:
    """Keys set or shown commented-out in the example, as section.key."""
    keys: set[str] = set()
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"^\[\[?(\w+)\]\]?$", line.strip())
        if header:
            section = header.group(1)
            continue
        assignment = re.match(r"^#?\s?(\w+) = ", line)
        if assignment and section:
            keys.add(f"{section}.{assignment.group(1)}")
    return keys


def model_keys() -> set[str]:
    keys: set[str] = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if name == "partners":
            annotation = PartnerSettings
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        keys.update(f"{name}.{key}" for key in annotation.model_fields)
    return keys


def test_every_key_is_documented_and_nothing_else() -> None:
    assert documented_keys() == model_keys()


def test_the_example_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLANCE_API_KEY", "x")
    example: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    loaded = load_config(EXAMPLE).settings
    defaults = Settings()
    for section, values in example.items():
        if section == "partners":
            continue
        for key, value in values.items():
            default = getattr(getattr(defaults, section), key)
            assert getattr(getattr(loaded, section), key) == default, f"{section}.{key}"
            if isinstance(default, float) and isinstance(value, str):
                assert parse_duration(value) == default


README = EXAMPLE.parents[1] / "README.md"


def readme_table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in the README, as cell lists."""
    text = README.read_text()
    section = text[text.index(heading) :]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_readme_documents_every_key_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = readme_table("## Configuration")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert set(documented) == model_keys()
    example: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for section, values in example.items():
        if section == "partners":
            continue
        for key, value in values.items():
            shown = documented[f"{section}.{key}"].strip("`")
            assert tomllib.loads(f"v = {shown}")["v"] == value, f"{section}.{key}"


def test_the_readme_documents_every_metric() -> None:
    from poller import metrics

    documented = {row[0].strip("`") for row in readme_table("## Metrics and health")}
    registered = {family.name for family in metrics.REGISTRY.collect()}
    # prometheus-client reports counters without their _total suffix.
    names = {name.removesuffix("_total") for name in documented}
    assert names == registered

"""Shared fixtures: the seed sample and the event schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent
SEED_SAMPLE = ROOT / "poller" / "emulator" / "data" / "seed_sample.json"


def schema_validator(name: str) -> Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def completed_schema() -> Draft202012Validator:
    return schema_validator("session.completed")


@pytest.fixture(scope="session")
def seed_sample() -> dict[str, Any]:
    """The vendor's sample PartnerCompletedSessions response, as the seed document has it."""
    return json.loads(SEED_SAMPLE.read_text())


@pytest.fixture(scope="session")
def started_schema() -> Draft202012Validator:
    return schema_validator("session.started")


@pytest.fixture(scope="session")
def counts_schema() -> Draft202012Validator:
    return schema_validator("session.counts")

"""Fixtures shared by every test layer: the real digits model, built once per session."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"
EVENT_FILES = sorted(p for p in EVENTS.glob("predict_*.json"))
STATUS_IN_NAME = re.compile(r"_(\d{3})\.json$")
# events/expected.json: what each event must get, {"status", "code"} (code None for 2xx),
# written by hand beside the events, never by the code under test.
EXPECTED = json.loads((EVENTS / "expected.json").read_text())


def expected_status(event_file: Path) -> int:
    """The status an event's file name promises (``..._404.json`` -> 404)."""
    match = STATUS_IN_NAME.search(event_file.name)
    assert match, f"{event_file.name} does not end in _<status>.json"
    assert EXPECTED[event_file.name]["status"] == int(match.group(1)), "expected.json disagrees"
    return int(match.group(1))


def expected_code(event_file: Path) -> str | None:
    """The error code an event must get (None for a success), from events/expected.json."""
    return EXPECTED[event_file.name]["code"]


def expected_labels(event: dict) -> list[int] | None:
    """True digit labels encoded in a request id ("...-label-3" or "...-labels-0-1-2")."""
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    try:
        request_id = json.loads(body)["id"]
    except (TypeError, ValueError, KeyError):
        return None
    match = re.search(r"labels?-([\d-]+)$", request_id)
    return [int(x) for x in match.group(1).split("-")] if match else None


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example: fp32 + int8 models, validation data and report (built, not committed)."""
    from onnxkit_tools.examples.digits import build_digits

    out = tmp_path_factory.mktemp("digits")
    build_digits(out)
    return out


@pytest.fixture(scope="session")
def digits_validation(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out features and labels."""
    data = np.load(digits_dir / "validation.npz")
    return data["input"], data["label"]

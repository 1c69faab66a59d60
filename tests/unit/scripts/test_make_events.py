"""scripts/make_events.py: events/ is what it writes (--check), and what it writes is sound."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

from tests.conftest import EVENTS, REPO

SCRIPT = REPO / "scripts" / "make_events.py"
spec = importlib.util.spec_from_file_location("make_events", SCRIPT)
assert spec is not None
assert spec.loader is not None
make_events = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = make_events
spec.loader.exec_module(make_events)


def _same_png_encoder() -> bool:
    """Whether this Pillow encodes the digits' PNGs byte for byte as the one that wrote events/
    (zlib builds differ: Pillow's wheels switched to zlib-ng)."""
    event = json.loads((EVENTS / "predict_image_png_200.json").read_text())
    return base64.b64decode(event["body"]) == make_events.png_of(make_events.ROW_PNG)


def test_check_passes_on_the_committed_events() -> None:
    # GIVEN the Pillow the dev extra pins (the one that wrote events/)
    assert _same_png_encoder(), (
        "this Pillow writes other PNG bytes than the one that wrote events/: install the "
        "dev extra's pin, or regenerate events/ with scripts/make_events.py and commit them"
    )
    # WHEN the script runs as a user runs it, in --check mode
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # THEN events/ is exactly what it would write
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_check_fails_on_a_changed_or_missing_file_and_writing_repairs_them(tmp_path: Path) -> None:
    # GIVEN a copy of events/ with one event changed and one removed
    events = tmp_path / "events"
    shutil.copytree(EVENTS, events)
    if not _same_png_encoder():  # start from this Pillow's own files
        assert make_events.main(["--events-dir", str(events)], out=lambda _: None) == 0
    changed = events / "text_plain_200.json"
    changed.write_text(changed.read_text().replace('"POST"', '"PUT"', 1))
    (events / "predict_image_png_200.json").unlink()
    lines: list[str] = []

    # WHEN checked, THEN both are named and the exit status is 1
    assert make_events.main(["--check", "--events-dir", str(events)], out=lines.append) == 1
    assert f"differs: {changed}" in lines
    assert f"differs: {events / 'predict_image_png_200.json'}" in lines

    # AND writing repairs them, after which the check passes
    assert make_events.main(["--events-dir", str(events)], out=lines.append) == 0
    assert make_events.main(["--check", "--events-dir", str(events)], out=lines.append) == 0


def test_expected_json_keeps_other_entries(tmp_path: Path) -> None:
    (tmp_path / "expected.json").write_text(
        json.dumps({"predict_hand_written_200.json": {"status": 200, "code": None}})
    )

    assert make_events.main(["--events-dir", str(tmp_path)], out=lambda _: None) == 0

    expected = json.loads((tmp_path / "expected.json").read_text())
    names = {s.name for s in make_events.all_specs()}
    assert set(expected) == names | {"predict_hand_written_200.json"}
    assert list(expected) == sorted(expected)
    assert expected["predict_image_png_200.json"] == {"status": 200, "code": None, "labels": [2]}
    assert expected["predict_image_bomb_413.json"]["code"] == "payload_too_large"


def _shape(value: object) -> object:
    """The keys of nested objects (values of other types reduced to their type)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items() if key != "body"}
    return type(value).__name__


def test_events_have_the_template_structure_and_their_own_stable_ids() -> None:
    template = json.loads((EVENTS / "predict_infer_200.json").read_text())
    specs = make_events.all_specs()
    events = [make_events.build_event(s, i) for i, s in enumerate(specs)]

    for s, event in zip(specs, events, strict=True):
        # the same fields as the hand-written template (headers aside, which vary by request)
        without_headers = {k: v for k, v in event.items() if "eaders" not in k}
        template_fields = {k: v for k, v in template.items() if "eaders" not in k}
        assert _shape(without_headers) == _shape(template_fields)
        assert event["multiValueHeaders"] == {k: [v] for k, v in event["headers"].items()}
        assert event["requestContext"]["path"] == "/Prod" + event["path"]
        assert event["requestContext"]["requestId"] == str(
            uuid.uuid5(make_events.REQUEST_ID_NAMESPACE, s.name)
        )
        # BinaryMediaTypes */*: every body arrives base64-encoded
        assert event["isBase64Encoded"] is (event["body"] is not None)
        assert (event["body"] is None) == (s.method == "GET")
    assert len({e["requestContext"]["requestId"] for e in events}) == len(events)
    assert len({e["headers"]["X-Amzn-Trace-Id"] for e in events}) == len(events)


def test_the_bomb_is_a_well_formed_png_declaring_its_size() -> None:
    data = make_events.bomb_png()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) < 100
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind, payload = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack_from(">I", data, offset + 8 + length)
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, payload))
        offset += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">II", chunks[0][1][:8]) == (100_000, 100_000)
    assert zlib.decompress(chunks[1][1]) == b"\x00" * 16


def test_binary_requests_announce_their_json_part() -> None:
    body, length = make_events.binary_request(
        {"inputs": [{"name": "text", "parameters": {"binary_data_size": None}}]},
        [make_events.bytes_elements([b"ab", b"c"])],
    )

    head = json.loads(body[:length])
    assert head["inputs"][0]["parameters"]["binary_data_size"] == 4 + 2 + 4 + 1
    assert body[length:] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"

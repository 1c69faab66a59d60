"""The endpoint's JSON log lines."""

from __future__ import annotations

import json
import logging

from onnxkit.adapters.endpoint.logs import JsonLinesFormatter


def test_log_records_are_json_lines_with_their_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "onnxkit.x", "levelname": "INFO", "msg": "hello %s", "args": ("you",)}
    )
    record.status = 200

    line = json.loads(JsonLinesFormatter().format(record))

    assert line["message"] == "hello you"
    assert line["status"] == 200
    assert line["level"] == "INFO"
    assert line["time"].endswith("+00:00")

"""Every file in events/ through the real handler in-process: its status, error code, metrics.

Replies are read with tritonclient, JSON and binary alike, never with our own codecs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    EVENT_FILES,
    EVENTS,
    EXPECTED,
    STATUS_IN_NAME,
    asks_binary_output,
    decode_proxy_reply,
    expected_code,
    expected_labels,
    expected_status,
)
from tests.functional.conftest import body_of


@pytest.fixture
def handler(published: object, make_handler: Callable[..., Callable[[dict], dict]]):
    return make_handler()


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda p: p.stem)
def test_event_returns_the_status_in_its_name(event_file: Path, handler) -> None:
    # GIVEN an API Gateway REST proxy event, exactly as sam local invoke would send it
    event = json.loads(event_file.read_text())

    # WHEN the handler serves it
    response = handler(event)

    # THEN the status is the one in the file name, the body is JSON (or binary tensors when the
    # request asked for them), an error has its code
    status = expected_status(event_file)
    assert response["statusCode"] == status, response["body"]
    headers = response["multiValueHeaders"]
    if status >= 400:
        assert headers["Content-Type"] == ["application/json"]
        assert response["isBase64Encoded"] is False
        body = body_of(response)
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == expected_code(event_file)
        assert body["error"]["message"]
        assert status < 500, "bad input must never be a server error"
        return
    assert expected_code(event_file) is None
    binary = asks_binary_output(event)
    assert headers["Content-Type"] == ["application/octet-stream" if binary else "application/json"]
    assert response["isBase64Encoded"] is binary
    assert ("Inference-Header-Content-Length" in headers) is binary
    if binary:
        document, _ = decode_proxy_reply(response)
        assert all("binary_data_size" in o["parameters"] for o in document["outputs"])
    else:
        assert "error" not in body_of(response)


def test_every_event_file_has_an_expectation_and_every_expectation_a_file() -> None:
    files = {p.name for p in EVENTS.glob("*.json") if STATUS_IN_NAME.search(p.name)}

    assert files == set(EXPECTED)


INFER_200 = [
    p
    for p in EVENT_FILES
    if json.loads(p.read_text())["path"].endswith("/infer") and expected_status(p) == 200
]


@pytest.mark.parametrize("event_file", INFER_200, ids=lambda p: p.stem)
def test_predictions_are_the_true_digits(event_file: Path, handler) -> None:
    event = json.loads(event_file.read_text())
    response = handler(event)
    document, outputs = decode_proxy_reply(response)
    labels = expected_labels(event, event_file)
    assert labels is not None, "a 200 infer event names its true labels (request id or labels)"
    datatypes = {o["name"]: o["datatype"] for o in document["outputs"]}
    assert outputs["label"].tolist() == labels
    assert datatypes["label"] == "INT64"
    assert document["model_name"] == "digits"
    assert document["model_version"] == "1"
    if "probabilities" in outputs:
        np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-4)
    if "top_labels" in outputs:  # the postprocessing: the best class first, named by labels.txt
        assert datatypes["top_labels"] == "BYTES"
        assert outputs["top_labels"].shape == (len(labels), 3)
        assert [int(x.decode()) for x in outputs["top_labels"][:, 0]] == labels
        assert outputs["top_indices"][:, 0].tolist() == labels


def test_outputs_equal_onnxruntime_on_the_same_input(handler, digits_dir: Path, digits_validation):
    import onnxruntime as ort

    features, _ = digits_validation
    batch = features[:16]
    event = json.loads((Path("events") / "predict_infer_200.json").read_text())
    event["body"] = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [16, 64], "datatype": "FP32", "data": batch.tolist()}
            ]
        }
    )
    body = body_of(handler(event))
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}

    session = ort.InferenceSession(str(digits_dir / "int8" / "model.onnx"))
    label, probabilities = session.run(["label", "probabilities"], {"input": batch})
    np.testing.assert_array_equal(outputs["label"], label)
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-6, atol=1e-7)


def test_metadata_describes_the_published_signature(handler, published) -> None:
    event = json.loads(Path("events/predict_model_metadata_200.json").read_text())
    body = body_of(handler(event))
    assert body["name"] == "digits"
    assert body["versions"] == ["1"]
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["datatype"] for o in body["outputs"]} == {
        "label": "INT64",
        "probabilities": "FP32",
        # what the declared postprocessing adds: the top 3 classes and their labels
        "top_indices": "INT64",
        "top_scores": "FP32",
        "top_labels": "BYTES",
    }
    assert body["parameters"]["processed_inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]}
    ]
    assert body["parameters"]["content_types"] == ["application/json", "image/png", "image/jpeg"]
    assert body["parameters"]["sha256"] == published.model_file.sha256
    assert body["parameters"]["quantization"]["weight_type"] == "QInt8"


def test_wrong_method_names_the_allowed_one(handler) -> None:
    event = json.loads(Path("events/predict_wrong_method_405.json").read_text())
    response = handler(event)
    assert response["statusCode"] == 405
    assert response["multiValueHeaders"]["Allow"] == ["POST"]


def test_zip_variant_prefix_is_stripped(published, make_handler) -> None:
    handler = make_handler(ONNXKIT_ROUTE_PREFIX="/zip")
    event = json.loads(Path("events/predict_infer_200.json").read_text())
    event["path"] = "/zip" + event["path"]
    assert handler(event)["statusCode"] == 200

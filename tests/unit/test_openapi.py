"""The OpenAPI documents: valid OpenAPI 3, one path per table route, schemas our answers fit."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import validate

from onnxkit.codecs import InferenceResponse, encode_response
from onnxkit.errors import (
    InvalidInputError,
    ModelNotReadyError,
    PayloadTooLargeError,
    error_body,
)
from onnxkit.openapi import build_document
from onnxkit.routes import ENDPOINT, FUNCTION, RouteTable


def schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    """A component schema with its $refs resolvable (for jsonschema)."""
    return {"$ref": f"#/components/schemas/{name}", "components": document["components"]}


@pytest.mark.parametrize("edge", [FUNCTION, ENDPOINT])
def test_the_document_is_valid_openapi_3_with_one_operation_per_route(edge: str) -> None:
    table = RouteTable(edge, openapi=True)  # type: ignore[arg-type]

    document = build_document(table)

    validate(document)  # raises on anything that is not OpenAPI 3.0
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations == {(route.method, route.path) for route in table.routes}
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    json.dumps(document)  # JSON-able


def test_every_operation_documents_json_errors_and_its_path_parameters() -> None:
    table = RouteTable(FUNCTION, openapi=True)
    document = build_document(table)
    infer = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]

    assert {p["name"] for p in infer["parameters"] if p["in"] == "path"} == {"name", "version"}
    assert {p["name"] for p in infer["parameters"] if p["in"] == "header"} == {
        "Inference-Header-Content-Length"
    }
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/InferenceRequest"},
            {"$ref": "#/components/schemas/Sentences"},
        ]
    }
    assert set(infer["requestBody"]["content"]) == {
        "application/json", "application/octet-stream", "text/plain", "image/png", "image/jpeg",
        "application/vnd.sagemaker-triton.binary+json",
    }  # fmt: skip
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json", "application/octet-stream"
    }  # fmt: skip
    success = {(route.method.lower(), route.path): str(route.status) for route in table.routes}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert {success[method, path], "4XX", "5XX"} <= set(operation["responses"])


@pytest.mark.parametrize(
    "error",
    [
        InvalidInputError("bad"),
        PayloadTooLargeError("big"),
        ModelNotReadyError("loading", code="overloaded"),
        RuntimeError("not ours"),
    ],
)
def test_our_error_bodies_fit_the_error_schema(error: Exception) -> None:
    document = build_document(RouteTable(ENDPOINT))
    _, payload, _ = error_body(error)

    jsonschema.validate(payload, schema(document, "Error"))


def test_api_gateways_own_refusals_fit_the_functions_document_only() -> None:
    function = build_document(RouteTable(FUNCTION))
    endpoint = build_document(RouteTable(ENDPOINT))
    refusal = {"message": "Forbidden"}
    four_xx = function["paths"]["/v2"]["get"]["responses"]["4XX"]["content"]["application/json"]

    jsonschema.validate(refusal, {**four_xx["schema"], "components": function["components"]})
    assert endpoint["paths"]["/v2"]["get"]["responses"]["4XX"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/Error"}
    assert function["components"]["securitySchemes"]["apiKey"]["name"] == "x-api-key"


def test_an_inference_response_fits_its_schema_and_a_request_its_schema() -> None:
    document = build_document(RouteTable(FUNCTION))
    response = encode_response(
        InferenceResponse(
            model_name="digits",
            model_version="1",
            outputs={
                "label": np.array([3], np.int64),
                "probabilities": np.full((1, 10), 0.1, np.float32),
                "mask": np.array([[True, False]]),
            },
            id="r1",
        )
    )
    request = {
        "id": "r1",
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [[0.5, 1.0]]}],
        "outputs": [{"name": "label"}],
    }

    jsonschema.validate(response, schema(document, "InferenceResponse"))
    jsonschema.validate(request, schema(document, "InferenceRequest"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"inputs": []}, schema(document, "InferenceRequest"))

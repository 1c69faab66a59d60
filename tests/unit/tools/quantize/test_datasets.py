"""The gate's data from text files and image folders, checked against references computed here.

Text references run the tokenizer with ``tokenizers`` (its own truncation and padding) or with
transformers' AutoTokenizer; image references decode with Pillow and do the arithmetic in numpy.
Neither uses the processing modules under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from onnxkit.manifest import TensorSpec
from onnxkit_tools.processing import ProcessingOptionError, ProcessingOptions
from onnxkit_tools.quantize.datasets import DataReader, data_kind
from onnxkit_tools.quantize.errors import QuantizeError
from tests.unit.tools.quantize.helpers import (
    DIGITS_DECLARATION,
    SENTENCES,
    digit_png,
    encode_image,
    reference_tokens,
    tokenizer_path,
    write_lines,
)

TOKEN_INPUTS = tuple(
    TensorSpec(name, "INT64", (-1, -1))
    for name in ("input_ids", "attention_mask", "token_type_ids")
)
PIXELS = (TensorSpec("pixels", "FP32", (-1, 3, 6, 6)),)
FLAT = (TensorSpec("input", "FP32", (-1, 64)),)

# The image declaration of the pixel tests: resize, center crop, ImageNet normalization, NCHW.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RGB_DECLARATION = {"color": "RGB", "resize": [8, 10], "crop": [6, 6], "mean": MEAN, "std": STD}


def reference_pixels(path: Path) -> np.ndarray:
    """RGB_DECLARATION by hand: Pillow decode and bilinear resize, numpy crop and normalize."""
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((10, 8), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float64)
    top, left = round((8 - 6) / 2), round((10 - 6) / 2)
    array = array[top : top + 6, left : left + 6] / 255.0
    array = (array - np.array(MEAN)) / np.array(STD)
    return array.transpose(2, 0, 1)


def image_reader(
    tmp_path: Path,
    declaration: dict[str, Any],
    inputs: tuple[TensorSpec, ...] = PIXELS,
    **options: Any,
) -> DataReader:
    (tmp_path / "image.json").write_text(json.dumps(declaration))
    return DataReader(inputs, ProcessingOptions(preprocess=tmp_path / "image.json", **options))


def digit_rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, (count, 64)).astype(np.float32)


# --- kinds ------------------------------------------------------------------------------------


def test_the_path_decides_the_kind(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()

    assert data_kind(tmp_path / "folder") == "images"
    assert data_kind(tmp_path / "val.npz") == "arrays"
    assert data_kind(tmp_path / "VAL.NPZ") == "arrays"
    assert data_kind(tmp_path / "val.txt") == "text"
    assert data_kind(tmp_path / "sentences") == "text"


def test_npz_arrays_are_read_as_they_are(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.savez(tmp_path / "val.npz", input_ids=ids, label=np.array([0, 1, 0]))

    dataset = DataReader(TOKEN_INPUTS).read(tmp_path / "val.npz", "validation")

    assert dataset.kind == "arrays"
    assert sorted(dataset.arrays) == ["input_ids", "label"]
    np.testing.assert_array_equal(dataset.arrays["input_ids"], ids)
    assert "3 rows" in dataset.description


# --- text -------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_a_text_file_is_tokenized_like_the_tokenizer_itself(tmp_path: Path, padding: str) -> None:
    # GIVEN sentences (one truncated at 24 tokens) with blank lines between them
    path = write_lines(tmp_path / "val.txt", SENTENCES)
    options = ProcessingOptions(tokenizer=tokenizer_path(), max_length=24, padding=padding)

    # WHEN the file is read with the tokenizer options
    dataset = DataReader(TOKEN_INPUTS, options).read(path, "validation")

    # THEN the feeds are the tokenizer's own output for the non-blank lines, in order
    expected = reference_tokens(SENTENCES, 24, fixed=padding == "max_length")
    assert sorted(dataset.arrays) == sorted(expected)
    for name, array in expected.items():
        assert dataset.arrays[name].dtype == np.int64
        np.testing.assert_array_equal(dataset.arrays[name], array, err_msg=name)
    width = 24 if padding == "max_length" else expected["input_ids"].shape[1]
    assert dataset.arrays["input_ids"].shape == (len(SENTENCES), width)
    assert width == 24  # the long sentence was cut at max_length
    assert dataset.kind == "text"
    assert f"{len(SENTENCES)} sentences" in dataset.description
    assert "max 24 tokens, truncation on" in dataset.description


def test_a_text_file_matches_transformers_autotokenizer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    # The longest sentence is shorter than max_length: "longest" pads to it.
    lines = ["A cat sat on the mat.", "Dogs bark", "Ünïcödé café"]
    path = write_lines(tmp_path / "cal.txt", lines, blank_every=1)
    auto = transformers.AutoTokenizer.from_pretrained(str(tokenizer_path().parent))
    expected = auto(lines, padding=True, truncation=True, max_length=64, return_tensors="np")

    dataset = DataReader(
        TOKEN_INPUTS, ProcessingOptions(tokenizer=tokenizer_path(), max_length=64)
    ).read(path, "calibration")

    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(dataset.arrays[name], expected[name], err_msg=name)
    assert dataset.arrays["input_ids"].shape[1] < 64


def test_the_tokenizer_feeds_only_the_inputs_the_model_has(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "val.txt", SENTENCES[:2])
    inputs = (
        TensorSpec("input_ids", "INT32", (-1, -1)),
        TensorSpec("attention_mask", "INT32", (-1, -1)),
    )

    dataset = DataReader(inputs, ProcessingOptions(tokenizer=tokenizer_path())).read(path, "v")

    assert sorted(dataset.arrays) == ["attention_mask", "input_ids"]
    assert dataset.arrays["input_ids"].dtype == np.int32
    expected = reference_tokens(SENTENCES[:2], 128, fixed=False)
    np.testing.assert_array_equal(dataset.arrays["input_ids"], expected["input_ids"])


def test_a_sentence_over_max_length_without_truncation_is_named_by_its_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "val.txt"
    path.write_text("short one\n\nanother short one\n" + "word " * 40 + "\nlast\n")
    options = ProcessingOptions(tokenizer=tokenizer_path(), max_length=16, truncation=False)

    with pytest.raises(QuantizeError) as caught:
        DataReader(TOKEN_INPUTS, options).read(path, "validation")

    assert f"{path} line 4 has more than --max-length 16 tokens" in caught.value.message
    assert "--no-truncation" in caught.value.message


def test_text_without_a_tokenizer_says_which_option_to_add(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "val.txt", SENTENCES)

    with pytest.raises(QuantizeError) as caught:
        DataReader(TOKEN_INPUTS).read(path, "validation")

    assert "add --tokenizer tokenizer.json" in caught.value.message
    assert str(path) in caught.value.message


@pytest.mark.parametrize("content", [b"", b"\n\n   \n\t\r\n"])
def test_a_text_file_without_sentences_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "val.txt"
    path.write_bytes(content)

    with pytest.raises(QuantizeError) as caught:
        DataReader(TOKEN_INPUTS, ProcessingOptions(tokenizer=tokenizer_path())).read(path, "v")

    assert "holds no sentences" in caught.value.message


def test_undecodable_text_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "val.txt"
    path.write_bytes(b"fine\nalso fine\nnot \xff fine\n")

    with pytest.raises(QuantizeError) as caught:
        DataReader(TOKEN_INPUTS, ProcessingOptions(tokenizer=tokenizer_path())).read(path, "v")

    assert "is not UTF-8 (line 3, byte 0xff)" in caught.value.message


def test_a_file_that_is_not_a_tokenizer_is_refused_when_the_options_are_read(
    tmp_path: Path,
) -> None:
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text('{"not": "a tokenizer"}')

    with pytest.raises(ProcessingOptionError) as caught:
        DataReader(TOKEN_INPUTS, ProcessingOptions(tokenizer=bogus))

    assert f"--tokenizer {bogus}" in caught.value.message


# --- images -----------------------------------------------------------------------------------


def test_an_image_folder_becomes_the_declared_tensor_in_name_order(tmp_path: Path) -> None:
    # GIVEN PNG and JPEG images of different sizes, written out of name order
    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir()
    for name, fmt, (height, width) in [
        ("c.png", "PNG", (12, 15)),
        ("a.jpg", "JPEG", (20, 20)),
        ("b.png", "PNG", (9, 11)),
    ]:
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        (folder / name).write_bytes(encode_image(array, fmt))
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: skipped

    # WHEN the folder is read with the image declaration
    dataset = image_reader(tmp_path, RGB_DECLARATION).read(folder, "calibration")

    # THEN each row is the reference computed from its file, sorted by name; no labels
    expected = np.stack([reference_pixels(folder / n) for n in ("a.jpg", "b.png", "c.png")])
    assert sorted(dataset.arrays) == ["pixels"]  # "feeds" defaulted to the only input
    assert dataset.arrays["pixels"].dtype == np.float32
    np.testing.assert_allclose(dataset.arrays["pixels"], expected, rtol=1e-5, atol=1e-5)
    assert dataset.kind == "images"
    assert "3 images" in dataset.description
    assert "labels: none" in dataset.description


def test_digit_renders_give_back_their_features(tmp_path: Path) -> None:
    rows = digit_rows(5)
    for index, row in enumerate(rows):
        digit_png(tmp_path / "images" / f"{index:03d}.png", row)

    dataset = image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "images", "v")

    # pixel x float32(1/15) is within an ulp of the feature, not always equal to it
    np.testing.assert_allclose(dataset.arrays["input"], rows, rtol=1e-6)


def test_class_subfolders_with_integer_names_are_the_labels(tmp_path: Path) -> None:
    # GIVEN val/<class>/<image>, one image a level deeper, one class folder empty
    rows = digit_rows(5)
    placed = [
        ("0/b.png", 0),
        ("0/a.png", 0),
        ("2/x.png", 2),
        ("2/deeper/y.png", 2),
        ("10/z.png", 10),
    ]
    for (name, _), row in zip(placed, rows, strict=True):
        digit_png(tmp_path / "val" / name, row)
    (tmp_path / "val" / "7").mkdir()

    dataset = image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "val", "v")

    # THEN sorted by class folder name, then path; the label is the folder's integer
    order = ["0/a.png", "0/b.png", "10/z.png", "2/deeper/y.png", "2/x.png"]
    np.testing.assert_array_equal(dataset.arrays["label"], [0, 0, 10, 2, 2])
    by_name = {name: row for (name, _), row in zip(placed, rows, strict=True)}
    np.testing.assert_allclose(dataset.arrays["input"], [by_name[n] for n in order], rtol=1e-6)
    assert "subfolder names as class indices" in dataset.description


def test_class_subfolders_map_to_their_line_in_labels(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("dog\ncat\nbird\n")
    for name, row in zip(["cat/1.png", "bird/2.png", "cat/3.png"], digit_rows(3), strict=True):
        digit_png(tmp_path / "val" / name, row)

    reader = image_reader(tmp_path, DIGITS_DECLARATION, FLAT, labels=tmp_path / "labels.txt")
    dataset = reader.read(tmp_path / "val", "v")

    np.testing.assert_array_equal(dataset.arrays["label"], [2, 1, 1])  # bird, cat, cat
    assert dataset.arrays["label"].dtype == np.int64
    assert "labels.txt" in dataset.description


def test_a_subfolder_missing_from_labels_is_named(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    digit_png(tmp_path / "val" / "cat" / "1.png", digit_rows(1)[0])
    digit_png(tmp_path / "val" / "horse" / "1.png", digit_rows(1)[0])
    reader = image_reader(tmp_path, DIGITS_DECLARATION, FLAT, labels=tmp_path / "labels.txt")

    with pytest.raises(QuantizeError) as caught:
        reader.read(tmp_path / "val", "v")

    assert f"subfolder {tmp_path / 'val' / 'horse'} is no line of --labels" in caught.value.message


def test_named_subfolders_without_labels_ask_for_labels(tmp_path: Path) -> None:
    digit_png(tmp_path / "val" / "cat" / "1.png", digit_rows(1)[0])

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "val", "v")

    assert "cat" in caught.value.message
    assert "--labels labels.txt" in caught.value.message


def test_label_in_the_file_name(tmp_path: Path) -> None:
    rows = digit_rows(4)
    names = ["002-label-7.png", "000-label-3.png", "001-label-0.png", "010-label-12.png"]
    for name, row in zip(names, rows, strict=True):
        digit_png(tmp_path / "images" / name, row)

    dataset = image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "images", "v")

    np.testing.assert_array_equal(dataset.arrays["label"], [3, 0, 7, 12])
    np.testing.assert_allclose(dataset.arrays["input"], rows[[1, 2, 0, 3]], rtol=1e-6)
    assert "file names (-label-<class index>)" in dataset.description


def test_a_label_beyond_the_labels_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("zero\none\n")
    digit_png(tmp_path / "images" / "000-label-5.png", digit_rows(1)[0])
    reader = image_reader(tmp_path, DIGITS_DECLARATION, FLAT, labels=tmp_path / "labels.txt")

    with pytest.raises(QuantizeError) as caught:
        reader.read(tmp_path / "images", "v")

    assert "class 5" in caught.value.message
    assert "names 2 classes" in caught.value.message


def test_only_some_images_labelled_in_their_name_is_refused(tmp_path: Path) -> None:
    digit_png(tmp_path / "images" / "000-label-5.png", digit_rows(1)[0])
    digit_png(tmp_path / "images" / "001.png", digit_rows(1)[0])

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "images", "v")

    assert f"{tmp_path / 'images' / '001.png'} has no label in its name" in caught.value.message


def test_images_beside_class_subfolders_are_refused(tmp_path: Path) -> None:
    digit_png(tmp_path / "val" / "0" / "a.png", digit_rows(1)[0])
    digit_png(tmp_path / "val" / "b.png", digit_rows(1)[0])

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "val", "v")

    assert "holds both files (b.png) and subfolders (0)" in caught.value.message


def test_a_folder_without_preprocess_says_which_option_to_add(tmp_path: Path) -> None:
    digit_png(tmp_path / "images" / "a.png", digit_rows(1)[0])

    with pytest.raises(QuantizeError) as caught:
        DataReader(FLAT).read(tmp_path / "images", "validation")

    assert "add --preprocess image.json" in caught.value.message


@pytest.mark.parametrize("layout", ["empty", "hidden only", "empty subfolders"])
def test_an_empty_folder_is_refused(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    if layout == "hidden only":
        digit_png(folder / ".hidden.png", digit_rows(1)[0])
    if layout == "empty subfolders":
        (folder / "0").mkdir()
        (folder / "1").mkdir()

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(folder, "validation")

    assert f"validation folder {folder} holds no images" in caught.value.message


def test_a_file_that_is_not_an_image_is_named(tmp_path: Path) -> None:
    digit_png(tmp_path / "val" / "3" / "a.png", digit_rows(1)[0])
    (tmp_path / "val" / "3" / "notes.txt").write_text("not an image")

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "val", "v")

    assert f"{tmp_path / 'val' / '3' / 'notes.txt'} is not an image" in caught.value.message


def test_a_damaged_image_is_named(tmp_path: Path) -> None:
    digit_png(tmp_path / "images" / "a.png", digit_rows(1)[0])
    damaged = tmp_path / "images" / "b.png"
    damaged.write_bytes((tmp_path / "images" / "a.png").read_bytes()[:30])

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, DIGITS_DECLARATION, FLAT).read(tmp_path / "images", "v")

    assert caught.value.message.startswith(f"{damaged} cannot be decoded")


def test_images_that_end_at_different_sizes_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode_image(np.zeros((8, 8), dtype=np.uint8)))
    (folder / "b.png").write_bytes(encode_image(np.zeros((8, 9), dtype=np.uint8)))
    inputs = (TensorSpec("x", "FP32", (-1, -1, -1)),)

    with pytest.raises(QuantizeError) as caught:
        image_reader(tmp_path, {"color": "L", "layout": "NHW"}, inputs).read(folder, "v")

    assert f"{folder / 'b.png'} is 8x9 after processing but {folder / 'a.png'} is 8x8" in (
        caught.value.message
    )


def test_a_declaration_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProcessingOptionError) as caught:
        image_reader(tmp_path, {**DIGITS_DECLARATION, "resize": [9, 9]}, FLAT)

    assert "[-1, 81] but the model's input has shape [-1, 64]" in caught.value.message

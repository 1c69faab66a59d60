"""The gate's data from the files people have: ``.npz`` arrays, a text file, a folder of images.

The path decides the kind: a folder holds images, a ``.npz`` file holds arrays, anything else is
text (UTF-8, one sentence per line, blank lines skipped). Sentences and images become model
inputs through the declarations ``onnxkit publish`` records from the same options
(``--tokenizer`` with ``--max-length``, ``--truncation``, ``--padding``; ``--preprocess``), run
by the code the function runs, so the gate measures the model behind the processing it serves.

Labels, for classification accuracy: an ``.npz``'s ``label`` array; for images, the subfolder an
image sits in (torchvision's ImageFolder layout: ``val/<class>/<image>``; the class is the
subfolder name's line in ``--labels``, or without it the name itself, an integer), or a file name
ending ``-label-<class index>`` (``007-label-3.png``, the digits example's images). Images
directly in the folder under other names, and sentences, have no labels: quality is then
agreement with fp32 alone.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from onnxkit.datatypes import BY_NAME, BY_ORT
from onnxkit.errors import OnnxkitError
from onnxkit.manifest import TensorSpec
from onnxkit.processing import Processing
from onnxkit.processing.image import ImageDecoder, ImageSpec
from onnxkit.processing.text import TextEncoder, TextSpec
from onnxkit_tools.processing import (
    ProcessingOptionError,
    ProcessingOptions,
    declare_inputs,
    read_labels,
)
from onnxkit_tools.quantize.data import LABEL_KEY, load_npz
from onnxkit_tools.quantize.errors import QuantizeError

ARRAYS, TEXT, IMAGES = "arrays", "text", "images"
KINDS = (ARRAYS, TEXT, IMAGES)

LABEL_IN_NAME = re.compile(r"-label-([0-9]+)$")
"""A file name (without its extension) ending ``-label-<class index>``."""

# File extensions of the encodings a declaration may accept (ImageSpec.formats).
_EXTENSIONS = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
}
_INDEX = re.compile(r"[0-9]+")
_BOM = b"\xef\xbb\xbf"

_T = TypeVar("_T")


def data_kind(path: Path) -> str:
    """``images`` for a folder, ``arrays`` for a ``.npz`` file, ``text`` for anything else."""
    if path.is_dir():
        return IMAGES
    if path.suffix.lower() == ".npz":
        return ARRAYS
    return TEXT


def model_inputs(session: Any) -> tuple[TensorSpec, ...]:
    """The model's inputs, as a manifest lists them, from its onnxruntime session.

    Unknown dimensions become -1; an input of a type the protocol cannot carry is left out
    (nothing can be declared for it, and npz data is fed to it as is).
    """
    specs = []
    for arg in session.get_inputs():
        datatype = BY_ORT.get(arg.type)
        if datatype is not None:
            shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
            specs.append(TensorSpec(arg.name, datatype.name, shape))
    return tuple(specs)


@dataclass(frozen=True)
class Dataset:
    """One data file, read: arrays named after model inputs (and ``label``), and what was done.

    Attributes:
        arrays: Model input -> rows, plus ``label`` (class indices) when the data has labels.
        kind: ``arrays``, ``text`` or ``images``.
        description: One line saying what was read and how it was processed.
    """

    arrays: dict[str, np.ndarray]
    kind: str
    description: str


class DataReader:
    """Reads the gate's data files into model inputs, with the processing the options declare.

    Args:
        inputs: The model's inputs (:func:`model_inputs`).
        processing: The tokenizer, image preprocessing and labels options (``onnxkit publish``'s);
            its postprocessing options are not used.
        progress: Show a progress bar on stderr (a terminal only) while images are decoded.

    Raises:
        ProcessingOptionError: The options do not fit the model, or a file they name is not
            what it should be (not a tokenizer, an empty labels file).
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        processing: ProcessingOptions | None = None,
        *,
        progress: bool = False,
    ) -> None:
        self.options = processing or ProcessingOptions()
        self.declared = declare_inputs(self.options, tuple(inputs))
        self._dtypes = {spec.name: np.dtype(BY_NAME[spec.datatype].numpy) for spec in inputs}
        self._progress = progress
        self._labels = read_labels(self.options.labels) if self.options.labels else None
        self._encoder: TextEncoder | None = None
        self._decoder: ImageDecoder | None = None
        self._used: set[str] = set()
        text, image = self.declared.text, self.declared.image
        if text is not None and self.options.tokenizer is not None:
            try:
                self._encoder = TextEncoder(text, self.options.tokenizer.read_bytes())
            except (OSError, ValueError) as exc:
                raise ProcessingOptionError(f"--tokenizer {self.options.tokenizer}: {exc}") from exc
        if image is not None:
            try:
                self._decoder = ImageDecoder(image)
            except ValueError as exc:
                raise ProcessingOptionError(f"--preprocess: {exc}") from exc

    @property
    def applied(self) -> Processing:
        """The declarations the data read so far went through (what the report records)."""
        return Processing(
            text=self.declared.text if TEXT in self._used else None,
            image=self.declared.image if IMAGES in self._used else None,
        )

    def read(self, source: Path | Mapping[str, np.ndarray], what: str) -> Dataset:
        """Read one data file (or take arrays as they are).

        Args:
            source: An ``.npz`` file, a text file, a folder of images, or arrays.
            what: ``calibration`` or ``validation``, for messages.

        Raises:
            QuantizeError: The path holds nothing usable, a file cannot be read or decoded, the
                processing its kind needs was not declared, or labels cannot be made.
        """
        if not isinstance(source, Path | str):
            arrays = dict(source)
            return Dataset(arrays, ARRAYS, f"{what}: {_describe_arrays(arrays)} (given as arrays)")
        path = Path(source)
        if not path.exists():
            raise QuantizeError(f"{what} data: no file or folder at {path}")
        kind = data_kind(path)
        if kind == ARRAYS:
            arrays = load_npz(path)
            return Dataset(arrays, kind, f"{what}: {path}: {_describe_arrays(arrays)}, as is")
        self._used.add(kind)
        if kind == TEXT:
            return self._read_text(path, what)
        return self._read_images(path, what)

    # --- text ---------------------------------------------------------------------------------

    def _read_text(self, path: Path, what: str) -> Dataset:
        if self._encoder is None:
            raise QuantizeError(
                f"{what} data {path} is read as text (one sentence per line; a folder is read "
                "as images, .npz as arrays): add --tokenizer tokenizer.json to say how "
                "sentences become the model's inputs"
            )
        numbers, lines = _read_lines(path, what)
        spec = self._encoder.spec
        # One call for the whole file: padding "longest" pads every row to the file's longest
        # sentence (as if the file were one batch), "max_length" to max_length; either way the
        # rows have one length and the gate can cut them into batches of any size.
        try:
            arrays = self._encoder.encode(lines, self._dtypes)
        except OnnxkitError as exc:
            raise self._text_error(path, numbers, lines, exc) from exc
        width = next(iter(arrays.values())).shape[1]
        padded = (
            "max_length"
            if spec.padding == "max_length"
            else "the longest sentence (padding longest, the file as one batch)"
        )
        return Dataset(
            arrays,
            TEXT,
            f"{what}: {path}: {len(lines)} sentences -> {_describe_text(spec, self.options)}"
            f" -> {', '.join(arrays)} [{len(lines)} x {width}], padded to {padded}",
        )

    def _text_error(
        self, path: Path, numbers: list[int], lines: list[str], exc: OnnxkitError
    ) -> QuantizeError:
        """Name the line the encoder refused (with truncation off, one too long)."""
        assert self._encoder is not None
        for number, line in zip(numbers, lines, strict=True):
            try:
                self._encoder.encode([line], self._dtypes)
            except OnnxkitError:
                return QuantizeError(
                    f"{path} line {number} has more than --max-length "
                    f"{self._encoder.spec.max_length} tokens and --no-truncation refuses it (as "
                    "the function would, with 400): shorten it, raise --max-length or allow "
                    "truncation"
                )
        return QuantizeError(f"{path}: the tokenizer refused the sentences: {exc.message}")

    # --- images -------------------------------------------------------------------------------

    def _read_images(self, folder: Path, what: str) -> Dataset:
        if self._decoder is None:
            raise QuantizeError(
                f"{what} data {folder} is a folder, read as images: add --preprocess "
                "image.json (the image preprocessing publish declares) to say how images "
                "become the model's input"
            )
        spec = self._decoder.spec
        files, names = self._image_files(folder, spec, what)
        labels, labelled_by = self._image_labels(folder, files, names)
        if labels is None and what == "validation":
            labelled_by += " (classifiers are judged on agreement with fp32)"
        rows: list[np.ndarray] = []
        first: Path | None = None
        for file in _progress(files, f"{what} images", enabled=self._progress):
            row = self._decode(file)
            if rows and row.shape != rows[0].shape:
                raise QuantizeError(
                    f"{file} is {_shape(row)} after processing but {first} is {_shape(rows[0])}: "
                    "declare resize (or crop) in the --preprocess file so every image ends at "
                    "one size"
                )
            first = first or file
            rows.append(row)
        arrays = {spec.feeds: np.concatenate(rows)}
        if labels is not None:
            arrays[LABEL_KEY] = labels
        shape = " x ".join(str(d) for d in arrays[spec.feeds].shape)
        return Dataset(
            arrays,
            IMAGES,
            f"{what}: {folder}: {len(files)} images -> --preprocess {self.options.preprocess} "
            f"({_describe_image(spec)}) -> {spec.feeds} [{shape}]; labels: {labelled_by}",
        )

    def _image_files(
        self, folder: Path, spec: ImageSpec, what: str
    ) -> tuple[list[Path], list[str] | None]:
        """The images, sorted by path, and per image its subfolder's name (None: no subfolders).

        Raises:
            QuantizeError: No image, a file that is not an image, or images both directly in
                the folder and in subfolders.
        """
        extensions = tuple(ext for name in spec.formats for ext in _EXTENSIONS[name])
        entries = sorted(_visible(folder.iterdir()))
        loose = [entry for entry in entries if not entry.is_dir()]
        subfolders = [entry for entry in entries if entry.is_dir()]
        if loose and subfolders:
            raise QuantizeError(
                f"{folder} holds both files ({loose[0].name}) and subfolders "
                f"({subfolders[0].name}): put every image in a class subfolder (its name is the "
                "label) or every image directly in the folder"
            )
        files: list[Path] = []
        names: list[str] | None = None
        if subfolders:
            names = []
            for subfolder in subfolders:
                inside = sorted(
                    p
                    for p in subfolder.rglob("*")
                    if not p.is_dir() and _is_visible(p.relative_to(subfolder))
                )
                files.extend(inside)
                names.extend([subfolder.name] * len(inside))
        else:
            files = loose
        for file in files:
            if not file.is_file() or file.suffix.lower() not in extensions:
                raise QuantizeError(
                    f"{file} is not an image: an image folder may hold only "
                    f"{', '.join(extensions)} files (the formats the --preprocess file accepts)"
                )
        if not files:
            raise QuantizeError(
                f"{what} folder {folder} holds no images ({', '.join(extensions)} files, "
                "directly or in class subfolders)"
            )
        return files, names

    def _image_labels(
        self, folder: Path, files: list[Path], names: list[str] | None
    ) -> tuple[np.ndarray | None, str]:
        """Class indices per image, and how they were found (for the description).

        Raises:
            QuantizeError: A subfolder name is not a class (not in ``--labels``; without it not
                an integer), or only some images are named ``...-label-<class>``.
        """
        if names is not None:
            indices = {name: self._class_index(folder / name) for name in dict.fromkeys(names)}
            via = (
                f"their lines in --labels {self.options.labels}"
                if self._labels is not None
                else "class indices"
            )
            return (
                np.asarray([indices[name] for name in names], dtype=np.int64),
                f"subfolder names as {via} ({len(indices)} classes)",
            )
        found = [LABEL_IN_NAME.search(file.stem) for file in files]
        if not any(found):
            return None, "none"
        if not all(found):
            bare = files[found.index(None)]
            named = files[next(i for i, match in enumerate(found) if match)]
            raise QuantizeError(
                f"{bare} has no label in its name but {named.name} has one: name every image "
                "<anything>-label-<class index>.<ext>, or none (then quality is agreement "
                "with fp32)"
            )
        classes = [int(match.group(1)) for match in found if match]
        for file, index in zip(files, classes, strict=True):
            self._check_index(index, file)
        return np.asarray(classes, dtype=np.int64), "file names (-label-<class index>)"

    def _class_index(self, subfolder: Path) -> int:
        name = subfolder.name
        if self._labels is not None:
            if name not in self._labels:
                shown = ", ".join(self._labels[:5]) + (", ..." if len(self._labels) > 5 else "")
                raise QuantizeError(
                    f"subfolder {subfolder} is no line of --labels {self.options.labels} "
                    f"({shown}): name each class subfolder after its label"
                )
            return self._labels.index(name)
        if not _INDEX.fullmatch(name):
            raise QuantizeError(
                f"subfolder {subfolder}: a class subfolder's name is its class index (0, 1, "
                "...) unless --labels labels.txt (one label per line, class 0 first) maps "
                "names to classes"
            )
        index = int(name)
        self._check_index(index, subfolder)
        return index

    def _check_index(self, index: int, where: Path) -> None:
        if self._labels is not None and index >= len(self._labels):
            raise QuantizeError(
                f"{where}: class {index}, but --labels {self.options.labels} names "
                f"{len(self._labels)} classes"
            )

    def _decode(self, file: Path) -> np.ndarray:
        """One image as the model input's row, ``[1, ...]``.

        Raises:
            QuantizeError: The file cannot be read or decoded, or is too large.
        """
        assert self._decoder is not None
        try:
            return self._decoder.decode([file.read_bytes()])
        except OSError as exc:
            raise QuantizeError(f"cannot read {file}: {exc}") from exc
        except OnnxkitError as exc:
            # The decoder numbers images in a request; here each is a file: name it.
            raise QuantizeError(exc.message.replace("image #0", str(file), 1)) from exc


def _visible(paths: Iterable[Path]) -> Iterator[Path]:
    """Leave out hidden files and folders (.DS_Store, .ipynb_checkpoints)."""
    return (path for path in paths if _is_visible(Path(path.name)))


def _is_visible(relative: Path) -> bool:
    return not any(part.startswith(".") for part in relative.parts)


def _read_lines(path: Path, what: str) -> tuple[list[int], list[str]]:
    """The file's non-blank lines and their line numbers (1-based).

    Raises:
        QuantizeError: The file cannot be read, is not UTF-8, or holds no sentence.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QuantizeError(f"cannot read {what} data {path}: {exc}") from exc
    raw = raw.removeprefix(_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise QuantizeError(
            f"{what} data {path} is read as text but is not UTF-8 (line {bad_line}, byte "
            f"0x{raw[exc.start]:02x}): write one sentence per line in UTF-8, or give arrays "
            "as .npz, images as a folder"
        ) from exc
    numbers: list[int] = []
    lines: list[str] = []
    # Split on "\n" alone: str.splitlines would also split inside a sentence at \x1c, \u2028...
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if line.strip():
            numbers.append(number)
            lines.append(line)
    if not lines:
        raise QuantizeError(
            f"{what} data {path} holds no sentences (one per line; blank lines are skipped)"
        )
    return numbers, lines


def _progress(items: list[_T], description: str, *, enabled: bool) -> Iterable[_T]:
    """``items``, with a progress bar on a terminal once it takes more than a second."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="image", file=sys.stderr, delay=1.0, leave=False)


def _shape(row: np.ndarray) -> str:
    return "x".join(str(d) for d in row.shape[1:])


def _describe_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    rows = {len(a) for a in arrays.values()}
    count = rows.pop() if len(rows) == 1 else "?"
    return f"{count} rows of {', '.join(sorted(arrays))}"


def _describe_text(spec: TextSpec, options: ProcessingOptions) -> str:
    return (
        f"--tokenizer {options.tokenizer} (max {spec.max_length} tokens, truncation "
        f"{'on' if spec.truncation else 'off'}, padding {spec.padding})"
    )


def _describe_image(spec: ImageSpec) -> str:
    parts = [f"color {spec.color}"]
    if spec.resize is not None:
        parts.append(f"resize {spec.resize[0]}x{spec.resize[1]}")
    if spec.resize_shorter is not None:
        parts.append(f"shorter side {spec.resize_shorter}")
    if spec.crop is not None:
        parts.append(f"crop {spec.crop[0]}x{spec.crop[1]}")
    if spec.invert:
        parts.append("inverted")
    parts.append(f"scale {spec.scale:.6g}")
    if any(spec.mean) or any(s != 1 for s in spec.std):
        parts.append(f"mean {list(spec.mean)} std {list(spec.std)}")
    parts.append(f"{spec.layout} {spec.dtype}")
    return ", ".join(parts)

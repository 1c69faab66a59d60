"""Request decode time of one 1x3x224x224 FP32 input: the v2 binary extension against JSON.

Both bodies carry the same seeded image:

  binary   the JSON part, then the raw little-endian floats (Inference-Header-Content-Length),
           as tritonclient sends by default
  json     the v2 JSON form with flat ``data``

A decode is what an edge does before the model runs: ``split_body`` (``parse_json`` inside it
for JSON) and ``decode_request`` against the input's signature. Each round times one block of
decodes of each body with time.perf_counter, the two interleaved so drift hits both. A block
holds as many decodes as fill --block-ms, counted once before the rounds (binary decodes are
far faster, so their blocks hold more). Per body: the median time per decode over --rounds
rounds and its min-max, then the ratio of medians JSON/binary and each body's size per value.
Both decodes are checked to give the image before anything is timed. Usage:

    .venv/bin/python scripts/bench_codecs.py [--rounds 7] [--block-ms 50]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from onnxkit.codecs import decode_request, encode_json, split_body
from onnxkit.manifest import TensorSpec

SHAPE = (1, 3, 224, 224)
SPEC = TensorSpec("image", "FP32", (-1, 3, 224, 224))
MAX_BYTES = 64 * 1024 * 1024  # the JSON body is ~3 MB: above the default limit, on purpose


def bodies(image: np.ndarray) -> dict[str, tuple[bytes, str | None]]:
    """Each form's body and its Inference-Header-Content-Length (None: the whole body is JSON)."""
    tensor = {"name": "image", "datatype": "FP32", "shape": list(image.shape)}
    head = encode_json(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": image.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    as_json = encode_json({"inputs": [{**tensor, "data": image.ravel().tolist()}]})
    return {
        "binary": (head + image.astype("<f4").tobytes(), str(len(head))),
        "json": (as_json, None),
    }


def decode(body: bytes, header: str | None) -> np.ndarray:
    """What an edge does with a request body before the model runs."""
    data, binary = split_body(body, header, max_bytes=MAX_BYTES)
    request = decode_request(data, (SPEC,), max_batch_size=1, binary=binary)
    return request.inputs["image"]


def block(call: Callable[[], object], number: int) -> float:
    """Milliseconds per call over one timed block of ``number`` calls."""
    started = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - started) * 1000 / number


def block_size(call: Callable[[], object], block_ms: float) -> int:
    """How many calls fill ``block_ms``: 1, 2, 5, 10, 20, 50... (as timeit's autorange)."""
    number = 1
    while True:
        for multiple in (1, 2, 5):
            if block(call, number * multiple) * number * multiple >= block_ms:
                return number * multiple
        number *= 10


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument(
        "--block-ms", type=float, default=50.0, help="length of a timed block (default 50 ms)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random image")
    args = parser.parse_args()
    if args.rounds < 1 or args.block_ms <= 0:
        parser.error("--rounds must be at least 1 and --block-ms above 0")

    image = np.random.default_rng(args.seed).standard_normal(SHAPE).astype(np.float32)
    forms = bodies(image)
    for name, (body, header) in forms.items():
        if not np.array_equal(decode(body, header), image):
            print(f"the {name} body does not decode to the image", file=sys.stderr)
            return 1

    calls = {name: functools.partial(decode, *form) for name, form in forms.items()}
    numbers = {name: block_size(call, args.block_ms) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, call in calls.items():
            samples[name].append(block(call, numbers[name]))

    count = image.size
    print(
        f"decode of one FP32 {list(SHAPE)} input ({count} values), {args.rounds} rounds, "
        f"blocks of ~{args.block_ms:g} ms, {os.cpu_count()} CPUs"
    )
    print(
        f"{'form':8} {'body bytes':>11} {'B/value':>8} {'decodes':>8} {'median ms':>10} "
        f"{'min-max ms':>16}"
    )
    for name, times in samples.items():
        size = len(forms[name][0])
        spread = f"{min(times):.3f}-{max(times):.3f}"
        print(
            f"{name:8} {size:11d} {size / count:8.2f} {numbers[name]:8d} "
            f"{statistics.median(times):10.3f} {spread:>16}"
        )
    ratio = statistics.median(samples["json"]) / statistics.median(samples["binary"])
    print(f"JSON / binary (ratio of medians): {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Warm-path latency of the local stack against its floors, measured in one run.

Layers, each timed on the same digits int8 model and the same one-row request:

  session.run        bare onnxruntime: the floor
  handler            the real Lambda handler in-process (Powertools, v2 codecs, predictor)
  emulator invoke    the function under the Lambda Runtime Interface Emulator (awslambdaric)
  start-api HTTP     HTTP -> proxy event -> emulator -> HTTP, as `onnxkit local start-api`

Also the cold start: the first invoke under the emulator (init, S3 download, verify, load).
Prints medians and p95 in ms and each layer's ratio to the floor. Usage:

    .venv/bin/python scripts/bench_local.py [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(call: Callable[[], object], requests: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p95(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.95) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="timed requests per layer")
    args = parser.parse_args()

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    import numpy as np
    import onnxruntime as ort

    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.aws import AwsClients
    from onnxkit.settings import Settings
    from onnxkit_tools.local.api_gateway import LocalApi, template_binary_media_types
    from onnxkit_tools.local.emulator import Emulator
    from onnxkit_tools.local.s3 import LOCAL_STORE, LocalS3, default_model_dir, seed_default_model

    event = json.loads((REPO / "events" / "predict_infer_200.json").read_text())
    row = np.array(json.loads(event["body"])["inputs"][0]["data"], np.float32).reshape(1, 64)
    model = default_model_dir() / "int8" / "model.onnx"
    results: dict[str, list[float]] = {}

    session = ort.InferenceSession(str(model))
    results["session.run"] = timed(lambda: session.run(None, {"input": row}), args.requests)

    with LocalS3() as s3, tempfile.TemporaryDirectory() as tmp:
        seed_default_model(s3.client())
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        settings = Settings.from_env(
            {
                "ONNXKIT_MODEL_STORE": LOCAL_STORE,
                "ONNXKIT_MODEL_NAME": "digits",
                "ONNXKIT_CACHE_DIR": f"{tmp}/a",
            }
        )

        class Context:
            function_name = "bench"
            memory_limit_in_mb = 2048
            invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
            aws_request_id = "bench"

        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # EMF lines
            handler = build_handler(settings, clients=AwsClients(s3=s3.client()))
            results["handler"] = timed(lambda: handler(event, Context()), args.requests)

        env = {
            "ONNXKIT_MODEL_STORE": LOCAL_STORE,
            "ONNXKIT_MODEL_NAME": "digits",
            "ONNXKIT_CACHE_DIR": f"{tmp}/b",
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        with (
            open(os.devnull, "w") as quiet,
            Emulator(REPO / "functions" / "predict", env, log=quiet) as emulator,
        ):
            started = time.perf_counter()
            first = emulator.invoke(event)
            cold = (time.perf_counter() - started) * 1000
            assert first["statusCode"] == 200, first
            results["emulator invoke"] = timed(lambda: emulator.invoke(event), args.requests)

            # The deployed API's binary media types, wherever the script is run from
            binary = template_binary_media_types(REPO / "template.yaml")
            api = LocalApi(emulator.invoke, 0, binary_media_types=binary).start()
            body = event["body"].encode()
            url = f"{api.url}/v2/models/digits/infer"

            def http() -> None:
                request = urllib.request.Request(
                    url, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as reply:
                    reply.read()

            results["start-api HTTP"] = timed(http, args.requests)
            api.shutdown()

    floor = statistics.median(results["session.run"])
    print(f"digits int8, batch 1, {args.requests} requests per layer, {os.cpu_count()} CPUs")
    print(f"{'layer':18} {'median ms':>10} {'p95 ms':>8} {'x floor':>9}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:18} {median:10.3f} {p95(samples):8.3f} {median / floor:9.1f}")
    print(f"cold start (first invoke under the emulator, incl. S3 fetch + load): {cold:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

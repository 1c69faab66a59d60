"""The function's cold start and warm invoke in a fresh process, against a naive script.

Each round starts two fresh Python processes, alternately, with an empty /tmp cache:

  function   `functions/predict/app.py` as Lambda runs it: imports, Settings from the
             environment, alias -> manifest -> download -> sha256 -> session -> warm-up (init),
             the first invoke of events/predict_infer_200.json (MiniLM: one validation row,
             batch 1 x 128 tokens, as bench_endpoint.py sends), then --warm more invokes of
             it (the handler in-process: Powertools, v2 codecs, predictor)
  naive      the floor: the same imports (boto3, numpy, onnxruntime), one S3 GET of the model,
             InferenceSession from the bytes, one run, then --warm more `session.run` calls

S3 is a moto server on 127.0.0.1 (its own process), with the model published as version 1,
alias prod. Cold: from process start to the first answer (the function also reports its
import, init and first-invoke times). Warm: the median of the --warm calls. Prints the median
over rounds and its spread (min-max), and the ratios of the medians. `--package-dir` runs
another checkout's runtime package in the function (its `layers/onnxkit`), to compare two
versions of the code on the same floor.

    .venv/bin/python scripts/bench_function.py [--model digits|minilm] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from onnxkit_tools.local.s3 import MotoProcess, ensure_bucket

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-cold"
STORE = f"s3://{BUCKET}/onnxkit"

FUNCTION = r"""
import json, os, sys, time
started = time.perf_counter()
sys.path.insert(0, os.environ["APP_DIR"])
import app  # the whole init, as Lambda runs it: imports, Settings, the model load
initialised = time.perf_counter()

class Context:
    function_name = "PredictFunction"
    memory_limit_in_mb = 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:PredictFunction"
    aws_request_id = "cold"
    def get_remaining_time_in_millis(self): return 30000

event = json.loads(os.environ["EVENT"])
response = app.lambda_handler(event, Context())
done = time.perf_counter()
answered_at = time.time()
assert response["statusCode"] == 200, response
sys.stdout = open(os.devnull, "w")  # the metrics Powertools prints on every invoke
warm = []
for _ in range(int(os.environ["WARM"])):
    t = time.perf_counter()
    app.lambda_handler(event, Context())
    warm.append((time.perf_counter() - t) * 1000)
sys.stdout = sys.__stdout__
print(json.dumps({"init_ms": (initialised - started) * 1000,
                  "first_invoke_ms": (done - initialised) * 1000,
                  "answered_at": answered_at,
                  "warm_ms": sorted(warm)[len(warm) // 2]}))
"""

NAIVE = r"""
import json, os, time
import boto3, numpy as np, onnxruntime as ort
s3 = boto3.client("s3")
data = s3.get_object(Bucket=os.environ["BUCKET"], Key=os.environ["KEY"])["Body"].read()
session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
feed = {k: np.asarray(v["data"], v["dtype"]).reshape(v["shape"])
        for k, v in json.loads(os.environ["FEED"]).items()}
session.run(None, feed)
answered_at = time.time()
warm = []
for _ in range(int(os.environ["WARM"])):
    t = time.perf_counter()
    session.run(None, feed)
    warm.append((time.perf_counter() - t) * 1000)
print(json.dumps({"answered_at": answered_at, "warm_ms": sorted(warm)[len(warm) // 2]}))
"""


def model_and_request(model: str) -> tuple[Path, str, dict]:
    """The model file, the model name, and one request (event body + the naive script's feed)."""
    if model == "digits":
        from onnxkit_tools.local.s3 import default_model_dir

        event = json.loads((REPO / "events" / "predict_infer_200.json").read_text())
        body = json.loads(event["body"])
        tensor = body["inputs"][0]
        feed = {
            tensor["name"]: {"data": tensor["data"], "shape": tensor["shape"], "dtype": "float32"}
        }
        return default_model_dir() / "int8" / "model.onnx", "digits", {"event": event, "feed": feed}
    import numpy as np

    from onnxkit.codecs import encode_tensor
    from onnxkit_tools.examples.minilm import default_minilm_dir, quick_int8

    int8 = quick_int8(default_minilm_dir())
    # One validation row (batch 1, 128 tokens), the workload bench_endpoint.py measures too.
    with np.load(default_minilm_dir() / "validation.npz") as rows:
        inputs = {name: rows[name][:1] for name in ("input_ids", "attention_mask")}
    event = json.loads((REPO / "events" / "sagemaker_minilm_infer_200.json").read_text())
    event["body"] = json.dumps({"inputs": [encode_tensor(k, v) for k, v in inputs.items()]})
    feed = {
        name: {"data": array.ravel().tolist(), "shape": list(array.shape), "dtype": "int64"}
        for name, array in inputs.items()
    }
    return int8, "minilm", {"event": event, "feed": feed}


INIT_KEYS = {  # the function's own breakdown; the load runs in a thread beside the imports
    "imports_ms": "imports (main thread)",
    "resolve_ms": "load: resolve alias + manifest",
    "download_ms": "load: download",
    "verify_ms": "load: sha256 (while streaming)",
    "session_ms": "load: session",
    "warmup_ms": "load: warm-up run",
    "waited_for_model_ms": "main thread waited for the load",
}


def one_run(script: str, env: dict[str, str]) -> dict[str, float]:
    """A fresh interpreter running ``script``: its report, and ``cold_ms``, the wall-clock time
    from just before the process was started to its first answer (so the warm calls after it
    are not counted)."""
    import time

    started = time.time()
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"a run failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    for line in lines[:-1]:  # the function's own "init breakdown" log line
        if '"init breakdown"' in line:
            logged = json.loads(line)
            report.update({f"init.{k}": v for k, v in logged.items() if k.endswith("_ms")})
    return {"cold_ms": (report.pop("answered_at") - started) * 1000, **report}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.0f} ms  ({min(values):.0f}-{max(values):.0f})"


def spread_fine(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} ms  ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("digits", "minilm"), default="digits")
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes of each kind")
    parser.add_argument("--warm", type=int, default=300, help="warm calls after the first")
    parser.add_argument(
        "--package-dir",
        type=Path,
        help="a checkout's layers/onnxkit to import the runtime from (default: the installed one)",
    )
    args = parser.parse_args()

    from onnxkit_tools.registry import Registry, publish_model

    model_file, name, request = model_and_request(args.model)
    with MotoProcess() as moto:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONNXKIT_"))}
        base.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": moto.endpoint,
            }
        )
        client = moto.client()
        ensure_bucket(client, BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            registry = Registry.from_uri(STORE, cache_dir=tmp, s3_client=client)
            manifest = publish_model(registry, model_file, name=name, version="1", alias="prod")
        key = f"onnxkit/models/{name}/1/{manifest.model_file.path}"
        function_env = {
            **base,
            "APP_DIR": str(REPO / "functions" / "predict"),
            "EVENT": json.dumps(request["event"]),
            "ONNXKIT_MODEL_STORE": STORE,
            "ONNXKIT_MODEL_NAME": name,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "INFO",  # for the init breakdown line
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        }
        if args.package_dir is not None:
            function_env["PYTHONPATH"] = str(args.package_dir.resolve())
        naive_env = {**base, "BUCKET": BUCKET, "KEY": key, "FEED": json.dumps(request["feed"])}
        function_env["WARM"] = naive_env["WARM"] = str(args.warm)
        runs: dict[str, list[dict[str, float]]] = {"function": [], "naive": []}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as cache:  # a cold /tmp every time
                runs["function"].append(
                    one_run(FUNCTION, {**function_env, "ONNXKIT_CACHE_DIR": cache})
                )
            runs["naive"].append(one_run(NAIVE, naive_env))

    size = model_file.stat().st_size / 1e6
    code = args.package_dir or "the installed onnxkit"
    print(f"{name} ({size:.1f} MB), {args.rounds} rounds, {os.cpu_count()} CPUs, code: {code}")
    function, naive = runs["function"], runs["naive"]

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print("cold: process start to the first answer")
    print(f"  function                             {spread([r['cold_ms'] for r in function])}")
    print(f"    init (import app: imports + load)   {spread([r['init_ms'] for r in function])}")
    for key in INIT_KEYS:
        values = [r[f"init.{key}"] for r in function if f"init.{key}" in r]
        if values:
            print(f"      {INIT_KEYS[key]:<33}{spread(values)}")
    first = spread([r["first_invoke_ms"] for r in function])
    print(f"    first invoke                        {first}")
    print(f"  naive script                         {spread([r['cold_ms'] for r in naive])}")
    cold_ratio = median(function, "cold_ms") / median(naive, "cold_ms")
    print(f"  function / naive (medians): {cold_ratio:.2f}x")
    print(f"warm: median of {args.warm} calls in the same process, per round")
    print(f"  handler invoke                       {spread_fine([r['warm_ms'] for r in function])}")
    print(f"  session.run                          {spread_fine([r['warm_ms'] for r in naive])}")
    warm_ratio = median(function, "warm_ms") / median(naive, "warm_ms")
    print(f"  handler / session.run (medians): {warm_ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The function's cold start and warm invoke in a fresh process, against a naive script.

For each model (digits; MiniLM int8; MiniLM int8 published with its tokenizer, sent one
sentence as text/plain (minilm-text: the naive script reads the tokenizer from S3 and tokenizes
too); a synthetic model of --synthetic-mb MB, 320 by default, to show how it scales with size),
each round starts two fresh Python processes, alternately, with an empty /tmp cache:

  function   `functions/predict/app.py` as Lambda runs it: imports, Settings from the
             environment, alias -> manifest -> download -> sha256 -> session -> warm-up (init),
             the first invoke of events/predict_infer_200.json (MiniLM: one validation row,
             batch 1 x 128 tokens, as bench_endpoint.py sends; synthetic: 16 ids), then
             --warm more invokes of it (the handler in-process: Powertools, v2 codecs, predictor)
  naive      the floor: the same imports (boto3, numpy, onnxruntime), one S3 GET of the model
             as the user brought it, InferenceSession from the bytes, one run, then --warm
             more `session.run` calls

S3 is a moto server on 127.0.0.1 (its own process, on the same CPUs), with each model
published as `onnxkit publish` does (version 1, alias prod; small models with their CPU twin).
Cold: from process start to the first answer; the function also logs its own init breakdown
(its thread loads while the main thread imports, so the phases overlap). Warm: the median of
the --warm calls in each process. Prints the median over rounds and its spread (min-max), the
ratios of the medians, and a summary over the models. The runtime package is byte-compiled
first, as `pip install` does in the image. `--package-dir` runs another checkout's runtime
package in the function (its `layers/onnxkit`), to compare two versions on the same floor.

    .venv/bin/python scripts/bench_function.py [--model all|digits|minilm|minilm-text|synthetic]
        [--rounds 7]
"""

from __future__ import annotations

import argparse
import compileall
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
# Warm: blocks of handler invokes alternate with blocks of bare session.run on the very
# session the handler runs (same process, same inputs); the first calls of each block dropped.
import numpy as np
session = app.lambda_handler.predictor.load()._session
tensors = json.loads(os.environ.get("TENSORS") or event["body"])["inputs"]  # text: tokenized
feed = {t["name"]: np.asarray(t["data"], np.dtype(t["datatype"].lower().replace("fp", "float")))
        .reshape(t["shape"]) for t in tensors}
sys.stdout = open(os.devnull, "w")  # the metrics Powertools prints on every invoke
warm, bare = [], []
calls = {"handler": lambda: app.lambda_handler(event, Context()),
         "bare": lambda: session.run(None, feed)}
for _ in range(max(1, int(os.environ["WARM"]) // 20)):
    for kind, times in (("handler", warm), ("bare", bare)):
        for i in range(25):
            t = time.perf_counter()
            calls[kind]()
            if i >= 5:
                times.append((time.perf_counter() - t) * 1000)
sys.stdout = sys.__stdout__
print(json.dumps({"init_ms": (initialised - started) * 1000,
                  "first_invoke_ms": (done - initialised) * 1000,
                  "answered_at": answered_at,
                  "warm_ms": sorted(warm)[len(warm) // 2],
                  "bare_ms": sorted(bare)[len(bare) // 2]}))
"""

NAIVE = r"""
import json, os, time
import boto3, numpy as np, onnxruntime as ort
s3 = boto3.client("s3")
data = s3.get_object(Bucket=os.environ["BUCKET"], Key=os.environ["KEY"])["Body"].read()
session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
feed = {k: np.asarray(v["data"], v["dtype"]).reshape(v["shape"])
        for k, v in json.loads(os.environ["FEED"]).items()}
if os.environ.get("TOKENIZER_KEY"):  # text: the sentence through its tokenizer, from the store
    import tokenizers
    raw = s3.get_object(Bucket=os.environ["BUCKET"], Key=os.environ["TOKENIZER_KEY"])["Body"]
    tokenizer = tokenizers.Tokenizer.from_str(raw.read().decode())
    tokenizer.no_padding()
    encoding = tokenizer.encode(os.environ["SENTENCE"])
    feed = {"input_ids": np.array([encoding.ids], np.int64),
            "attention_mask": np.array([encoding.attention_mask], np.int64)}
session.run(None, feed)
answered_at = time.time()
warm = []
for _ in range(int(os.environ["WARM"])):
    t = time.perf_counter()
    session.run(None, feed)
    warm.append((time.perf_counter() - t) * 1000)
print(json.dumps({"answered_at": answered_at, "warm_ms": sorted(warm)[len(warm) // 2]}))
"""


def model_and_request(model: str, synthetic_mb: int = 320) -> tuple[Path, str, dict]:
    """The model file, the model name, and one request (event body + the naive script's feed)."""
    if model == "synthetic":
        ids = [[(7 * i) % 1000 for i in range(16)]]
        event = json.loads((REPO / "events" / "predict_infer_200.json").read_text())
        tensor = {"name": "ids", "shape": [1, 16], "datatype": "INT64", "data": ids[0]}
        event["body"] = json.dumps({"inputs": [tensor]})
        event["path"] = "/v2/models/synthetic/infer"
        feed = {"ids": {"data": ids[0], "shape": [1, 16], "dtype": "int64"}}
        return synthetic_model(synthetic_mb), "synthetic", {"event": event, "feed": feed}
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
    from onnxkit_tools.examples.minilm import default_minilm_dir, quick_int8, tokenizer_file

    if model == "minilm-text":  # one sentence as a text/plain body, tokenized by the function
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file()))
        tokenizer.no_padding()
        encoding = tokenizer.encode(SENTENCE)
        inputs = {
            "input_ids": np.array([encoding.ids], np.int64),
            "attention_mask": np.array([encoding.attention_mask], np.int64),
        }
        event = json.loads((REPO / "events" / "text_plain_200.json").read_text())
        event["path"] = "/v2/models/minilm-text/infer"
        event["body"], event["isBase64Encoded"] = SENTENCE, False
        feed = {
            name: {"data": array.ravel().tolist(), "shape": list(array.shape), "dtype": "int64"}
            for name, array in inputs.items()
        }
        tensors = json.dumps({"inputs": [encode_tensor(k, v) for k, v in inputs.items()]})
        request = {"event": event, "feed": feed, "tensors": tensors, "sentence": SENTENCE}
        return quick_int8(default_minilm_dir()), "minilm-text", request

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


MODELS = ("digits", "minilm", "minilm-text", "synthetic")
SENTENCE = "The quick brown fox jumps over the lazy dog, then sleeps in the warm afternoon sun."

INIT_KEYS = {  # the function's own breakdown; the load runs in a thread beside the imports
    "imports_ms": "imports (main thread)",
    "resolve_ms": "load: resolve alias + manifest",
    "download_ms": "load: download",
    "verify_ms": "load: sha256 (while streaming)",
    "session_ms": "load: session",
    "processing_ms": "load: processing (tokenizer, labels)",
    "warmup_ms": "load: warm-up run",
    "waited_for_model_ms": "main thread waited for the load",
}


def synthetic_model(size_mb: int) -> Path:
    """A single-file model of about ``size_mb`` MB: ids INT64 [N, 16] -> Gather from a float32
    table [rows, 1024] -> mean over the ids -> y FP32 [N, 1024]. Cached by size."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path.home() / ".cache" / "onnxkit" / "bench" / f"synthetic-{size_mb}mb-v1"
    path = folder / "model.onnx"
    if path.is_file():
        return path
    rows = size_mb * 1_000_000 // (4 * 1024)
    table = np.random.default_rng(0).standard_normal((rows, 1024), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("ReduceMean", ["rows", "axes"], ["y"], keepdims=0),
        ],
        "synthetic",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1]), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / ".model.onnx.partial"
    onnx.save_model(model, str(partial))
    partial.replace(path)
    return path


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


def bench_model(
    model: str,
    args: argparse.Namespace,
    moto: MotoProcess,
    base: dict[str, str],
    extra_env: dict[str, str],
) -> dict[str, list[dict[str, float]]]:
    """Publish ``model`` to the moto store and time ``--rounds`` fresh processes of each kind
    (``extra_env``: more settings for the function)."""
    from onnxkit_tools.registry import Registry, publish_model

    model_file, name, request = model_and_request(model, args.synthetic_mb)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry.from_uri(STORE, cache_dir=tmp, s3_client=moto.client())
        # Another checkout is measured as it published: without the CPU twin it cannot read.
        if "1" in registry.list_versions(name):  # a second case on the same model
            manifest = registry.get_manifest(name, "1")
        else:
            processing = None
            if "sentence" in request:
                from onnxkit_tools.examples.minilm import minilm_processing

                processing = minilm_processing()
            manifest = publish_model(
                registry,
                model_file,
                name=name,
                version="1",
                alias="prod",
                cpu_graph=args.package_dir is None,
                processing=processing,
            )
    key = f"onnxkit/models/{name}/1/{manifest.model_file.path}"  # the original, for the floor
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
        # in the function even past ONNXKIT_AUTO_MAX_LAMBDA_BYTES (the synthetic model)
        "ONNXKIT_BACKEND": "lambda",
        **extra_env,
    }
    if args.package_dir is not None:  # that checkout's runtime package and app.py
        function_env["PYTHONPATH"] = str(args.package_dir.resolve())
        function_env["APP_DIR"] = str(args.package_dir.resolve().parents[1] / "functions/predict")
    naive_env = {**base, "BUCKET": BUCKET, "KEY": key, "FEED": json.dumps(request["feed"])}
    if "sentence" in request:  # both sides tokenize: the function with its declared tokenizer
        function_env["TENSORS"] = request["tensors"]
        naive_env["SENTENCE"] = request["sentence"]
        naive_env["TOKENIZER_KEY"] = f"onnxkit/models/{name}/1/tokenizer.json"
    function_env["WARM"] = naive_env["WARM"] = str(args.warm)
    runs: dict[str, list[dict[str, float]]] = {"function": [], "naive": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:  # a cold /tmp every time
            runs["function"].append(one_run(FUNCTION, {**function_env, "ONNXKIT_CACHE_DIR": cache}))
        runs["naive"].append(one_run(NAIVE, naive_env))

    size = manifest.total_size / 1e6
    twin = "with its CPU twin" if manifest.cpu_graph else "no CPU twin"
    how = ", ".join(f"{k}={v}" for k, v in extra_env.items())
    print(f"\n{name} ({size:.1f} MB, {twin}), {args.rounds} rounds, {os.cpu_count()} CPUs {how}")
    function, naive = runs["function"], runs["naive"]
    print("cold: process start to the first answer")
    print(f"  function                             {spread([r['cold_ms'] for r in function])}")
    print(f"    init (import app: imports + load)   {spread([r['init_ms'] for r in function])}")
    for key_ in INIT_KEYS:
        values = [r[f"init.{key_}"] for r in function if f"init.{key_}" in r]
        if values:
            print(f"      {INIT_KEYS[key_]:<33}{spread(values)}")
    first = spread([r["first_invoke_ms"] for r in function])
    print(f"    first invoke                        {first}")
    print(f"  naive script                         {spread([r['cold_ms'] for r in naive])}")
    print(f"  function / naive (medians): {ratio(runs, 'cold_ms'):.2f}x")
    print(
        f"warm: {args.warm} handler invokes alternating in blocks with as many bare "
        "session.run calls on the handler's own session, per round"
    )
    print(f"  handler invoke                       {spread_fine([r['warm_ms'] for r in function])}")
    print(f"  session.run (same process)           {spread_fine([r['bare_ms'] for r in function])}")
    print(f"  session.run (naive script)           {spread_fine([r['warm_ms'] for r in naive])}")
    print(f"  handler / session.run, same process (median of the rounds): {warm_ratio(runs):.3f}x")
    return runs


def warm_ratio(runs: dict[str, list[dict[str, float]]]) -> float:
    """The median over rounds of the handler's warm median over bare session.run's in the
    same process (a process whose threads landed badly is slow on both sides alike)."""
    return statistics.median(r["warm_ms"] / r["bare_ms"] for r in runs["function"])


def ratio(runs: dict[str, list[dict[str, float]]], key: str) -> float:
    """The function's median over the naive script's."""
    function = statistics.median(row[key] for row in runs["function"])
    return function / statistics.median(row[key] for row in runs["naive"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        choices=("all", *MODELS),
        default="all",
        help="minilm-text: MiniLM published with its tokenizer, one text/plain sentence",
    )
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes of each kind")
    parser.add_argument("--warm", type=int, default=300, help="warm calls after the first")
    parser.add_argument(
        "--synthetic-mb", type=int, default=320, help="size of the synthetic model (MB)"
    )
    parser.add_argument(
        "--ranged-gets",
        action="store_true",
        help="also run the synthetic model with the default parallel ranged GETs (slow on moto)",
    )
    parser.add_argument(
        "--package-dir",
        type=Path,
        help="a checkout's layers/onnxkit to import the runtime from (default: the installed one)",
    )
    args = parser.parse_args()
    # moto answers each ranged GET by copying the whole object: against it, the parallel ranged
    # GETs the function makes for large files (ONNXKIT_S3_PARALLEL_MB) measure moto, not the
    # kit. The floor reads with one GET too; --ranged-gets adds the default path as a case.
    one_get = {"ONNXKIT_S3_PARALLEL_MB": "0"}
    cases = [
        (model, one_get if model == "synthetic" else {})
        for model in (
            ("digits", "minilm", "minilm-text", "synthetic")
            if args.model == "all"
            else (args.model,)
        )
    ]
    if args.ranged_gets and any(model == "synthetic" for model, _ in cases):
        cases.append(("synthetic", {}))

    # The image's pip install byte-compiles the package; do the same for the code measured.
    package = args.package_dir or Path(__import__("onnxkit").__file__).parents[1]
    compileall.compile_dir(str(package / "onnxkit"), quiet=1)
    compileall.compile_dir(str(package.parents[1] / "functions" / "predict"), quiet=1)
    print(f"code: {package} (byte-compiled)")

    results = {}
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
        ensure_bucket(moto.client(), BUCKET)
        for model, extra_env in cases:
            label = model + (" (ranged GETs)" if model == "synthetic" and not extra_env else "")
            results[label] = bench_model(model, args, moto, base, extra_env)

    print("\nsummary (medians; function / naive script)")
    print("  model                    cold function   cold naive   ratio   warm ratio")
    for model, runs in results.items():
        cold = statistics.median(r["cold_ms"] for r in runs["function"])
        floor = statistics.median(r["cold_ms"] for r in runs["naive"])
        print(
            f"  {model:<23} {cold:10.0f} ms {floor:9.0f} ms {ratio(runs, 'cold_ms'):6.2f}x"
            f" {warm_ratio(runs):9.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

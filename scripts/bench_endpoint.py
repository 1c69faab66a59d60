"""Requests per second of onnxkit's SageMaker endpoint server against Flask, gunicorn and BentoML.

Each server serves the same ONNX model on 127.0.0.1, one at a time, under the same load:

  onnxkit   python -m onnxkit.adapters.endpoint (uvicorn + Starlette), POST /invocations,
            ONNXKIT_WORKERS=<--workers>, ONNXKIT_INTRA_OP_THREADS=1
  flask     scripts/peers/flask_app.py under `flask run`, the tutorial way, POST /predict
  gunicorn  the same app under `gunicorn -w <--workers> --threads 4`, POST /predict
  bentoml   scripts/peers/bento_service.py under `bentoml serve`, its defaults, POST /predict

The load is wrk: one run per measurement, --concurrency keep-alive connections, a generated
Lua script that cycles through 32 pre-encoded Open Inference Protocol v2 bodies and
prints its summary as JSON. Before a server's timed load, every distinct body is sent once
with a plain Python client and the outputs are compared with onnxruntime run here (labels
exactly, floats rtol 1e-3 / atol 1e-4): a server that answers wrongly fails, unmeasured.
Each server's CPU is read with psutil over its process tree (processes that start or exit
inside the window count), wrk's beside it: servers and wrk share the machine's CPUs. The
rest of the machine's CPU use in each window is shown too ("others"): on a shared machine,
--wait-quiet waits for other work to pause before each measurement.

Servers are interleaved round by round, so drift on a shared machine hits them all. Per
server: the median req/s and its min-max, median p50/p99 and CPU cores; then onnxkit's ratio
of medians against each peer with its target (1.5x gunicorn at the same worker count, 3x
tutorial Flask, 3x BentoML). The floor row is bare InferenceSession.run here, one thread.

--model minilm serves MiniLM-L6 int8 (quantize_dynamic, per-channel QInt8, cached under
.onnxkit/bench-models by the fp32 file's sha256) and adds the latency check: one connection,
sequential requests, onnxkit's p50 and p95 against bare InferenceSession.run with the
worker's session options, for 1 worker x all CPUs and for --workers workers x 1 thread each.
The two alternate in 2 s blocks (a small VM's CPUs change speed for tens of seconds at a
time); the median over pairs of server over floor within 1.15x passes.

Peers run from their own venvs under .onnxkit/bench-venvs (made with --python, then reused);
server logs go to .onnxkit/bench-logs. Everything started is stopped on exit. Needs wrk
(`apt-get install wrk`, `brew install wrk`) and psutil.

    .venv/bin/python scripts/bench_endpoint.py --json .onnxkit/bench-endpoint.json
    .venv/bin/python scripts/bench_endpoint.py --model minilm --servers onnxkit
    .venv/bin/python scripts/bench_endpoint.py --servers onnxkit,gunicorn --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from onnxkit_tools.net import LOOPBACK, free_port, wait_http

REPO = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
WORK = REPO / ".onnxkit"  # git-ignored
SERVERS = ("onnxkit", "flask", "gunicorn", "bentoml")
TARGETS = {"gunicorn": 1.5, "flask": 3.0, "bentoml": 3.0}  # onnxkit's req/s over the peer's
LATENCY_TARGET = 1.15  # MiniLM: onnxkit's latency over bare InferenceSession.run
VENVS = {"flask": "flask", "gunicorn": "flask", "bentoml": "bentoml"}
PACKAGES = {
    "flask": ["flask", "gunicorn", "onnxruntime", "numpy"],
    "bentoml": ["bentoml", "onnxruntime", "numpy"],
}
RTOL, ATOL = 1e-3, 1e-4
DISTINCT = 32
FLOOR_SECONDS = 3.0
READY_TIMEOUT_S = 120.0
LATENCY_BLOCK_S = 2.0  # each side of a floor/server pair in the MiniLM check
BUSY_CORES = 0.2  # other processes' CPU in a window beyond which its numbers are suspect
WRK_MARKER = "@@wrk-json "
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
CPUS = len(os.sched_getaffinity(0))


class BenchError(Exception):
    """A server or its venv could not be made ready, or it answered wrongly."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the workload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The model, the distinct request bodies, their feeds and the outputs each must get."""

    model_path: Path
    bodies: list[bytes]
    feeds: list[dict[str, np.ndarray]]
    expected: list[dict[str, np.ndarray]]


def minilm_int8() -> Path:
    """MiniLM-L6 dynamic int8 (per-channel QInt8), built once and cached beside the fp32 export."""
    from onnxkit_tools.examples.minilm import default_minilm_dir, quick_int8

    return quick_int8(default_minilm_dir())


def build_workload(model: str, batch: int) -> Workload:
    """``DISTINCT`` v2 JSON bodies of ``batch`` validation rows each, and their outputs."""
    import onnxruntime as ort

    from onnxkit.codecs import encode_tensor  # the v2 tensor form the servers decode

    if model == "digits":
        from onnxkit_tools.local.s3 import default_model_dir

        folder, model_path = default_model_dir(), default_model_dir() / "int8" / "model.onnx"
    else:
        from onnxkit_tools.examples.minilm import default_minilm_dir

        folder, model_path = default_minilm_dir(), minilm_int8()
    with np.load(folder / "validation.npz") as data:
        names = ("input",) if model == "digits" else ("input_ids", "attention_mask")
        inputs = {name: data[name] for name in names}
    session = ort.InferenceSession(str(model_path))
    outputs = [output.name for output in session.get_outputs()]
    rows = len(next(iter(inputs.values())))
    bodies, feeds, expected = [], [], []
    for index in range(DISTINCT):
        picked = [(index * batch + offset) % rows for offset in range(batch)]
        feed = {name: values[picked] for name, values in inputs.items()}
        tensors = [encode_tensor(name, array) for name, array in feed.items()]
        bodies.append(json.dumps({"inputs": tensors}, separators=(",", ":")).encode())
        feeds.append(feed)
        expected.append(dict(zip(outputs, session.run(outputs, feed), strict=True)))
    return Workload(model_path, bodies, feeds, expected)


def compare_outputs(reply: Any, expected: dict[str, np.ndarray]) -> str | None:
    """None when a parsed v2 reply holds every expected output, else what is wrong."""
    try:
        got = {
            out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in reply["outputs"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed reply ({type(exc).__name__}: {exc})"
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            return f"no output {name!r}"
        if have.shape != want.shape:
            return f"{name}: shape {list(have.shape)}, expected {list(want.shape)}"
        if want.dtype.kind in "iub" and not np.array_equal(have, want):
            return f"{name}: {have.ravel()[:8].tolist()}, expected {want.ravel()[:8].tolist()}"
        if want.dtype.kind == "f" and not np.allclose(have, want, rtol=RTOL, atol=ATOL):
            return f"{name}: off by up to {np.max(np.abs(have - want)):.3g}"
    return None


def check_answers(port: int, path: str, workload: Workload) -> None:
    """Send every distinct body once on one keep-alive connection; compare the outputs.

    Raises:
        BenchError: A request failed or an answer is wrong.
    """
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    try:
        for index, body in enumerate(workload.bodies):
            connection.request("POST", path, body, HEADERS)
            reply = connection.getresponse()
            payload = reply.read()
            if reply.status != 200:
                raise BenchError(f"request {index}: HTTP {reply.status}: {payload[:200]!r}")
            try:
                problem = compare_outputs(json.loads(payload), workload.expected[index])
            except ValueError:
                problem = f"not JSON: {payload[:200]!r}"
            if problem is not None:
                raise BenchError(f"request {index} answered wrongly: {problem}")
    finally:
        connection.close()


# --- wrk --------------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal, its level chosen so ``text`` cannot close it."""
    if "\r" in text:
        raise ValueError("Lua long strings turn CR into LF: the text must not contain CR")
    level = 0
    while f"]{'=' * level}]" in f"{text}]":
        level += 1
    return f"[{'=' * level}[\n{text}]{'=' * level}]"  # Lua drops a newline after the opening


def wrk_script(bodies: Sequence[bytes], path: str) -> str:
    """A wrk script: each connection POSTs ``bodies`` in turn; ``done`` prints one JSON line.

    The line is ``WRK_MARKER`` then the request count, wrk's error counts and latency (mean,
    max, p50/p90/p95/p99) in microseconds. Each wrk thread starts at a different body.
    """
    pool = ",\n".join(f"  {lua_string(body.decode())}" for body in bodies)
    headers = ", ".join(f'["{name}"] = "{value}"' for name, value in HEADERS.items())
    return f"""-- written by scripts/bench_endpoint.py
local bodies = {{
{pool}
}}
local prepared, turn, threads = {{}}, 0, 0

function setup(thread)
  thread:set("first", threads * 7)
  threads = threads + 1
end

function init(args)
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format("POST", "{path}", {{{headers}}}, body)
  end
  turn = (first or 0) % #prepared
end

function request()
  turn = turn % #prepared + 1
  return prepared[turn]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{WRK_MARKER}{{"requests":%d,"duration_us":%d,"connect":%d,' ..
    '"read":%d,"write":%d,"status":%d,"timeout":%d,"latency_us":{{"mean":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p95":%d,"p99":%d}}}}\\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99)))
end
"""


def parse_wrk(stdout: str) -> dict[str, Any]:
    """One wrk run's numbers, from the line its ``done`` hook printed.

    Returns:
        ``requests``, ``ok`` (2xx/3xx), ``non_2xx``, ``socket_errors``, ``seconds``,
        ``req_per_s`` (OK answers per second), ``mean_ms``, ``max_ms`` and ``p50_ms`` ...
        ``p99_ms``.

    Raises:
        BenchError: No summary line.
    """
    line = next((ln for ln in stdout.splitlines() if ln.startswith(WRK_MARKER)), None)
    if line is None:
        raise BenchError(f"wrk printed no summary; its output:\n{stdout[-2000:]}")
    raw = json.loads(line.removeprefix(WRK_MARKER))
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status"]
    return {
        "requests": raw["requests"],
        "ok": ok,
        "non_2xx": raw["status"],
        "socket_errors": sum(raw[kind] for kind in ("connect", "read", "write", "timeout")),
        "seconds": seconds,
        "req_per_s": ok / seconds if seconds else 0.0,
    } | {f"{name}_ms": micros / 1000 for name, micros in raw["latency_us"].items()}


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> str:
    """One wrk run (as many threads as CPUs, at most one per connection); its stdout.

    Raises:
        BenchError: wrk failed.
    """
    argv = ["wrk", f"-t{min(connections, CPUS)}", f"-c{connections}", f"-d{seconds:g}s"]
    argv += ["--latency", "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


# --- processes --------------------------------------------------------------------------------

CpuReading = dict[tuple[int, float], float]


def tree_cpu(root: psutil.Process) -> CpuReading:
    """CPU seconds of each live process of the tree, keyed by (pid, start time).

    A value is user + system of the process plus that of the children it has reaped, so the
    difference of two sums (:func:`window_cpu`) still counts a worker that exited in between.
    """
    reading: CpuReading = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = process.cpu_times()
                cpu = t.user + t.system + t.children_user + t.children_system
                reading[(process.pid, process.create_time())] = cpu
    return reading


def window_cpu(before: CpuReading, after: CpuReading) -> tuple[float, list[float]]:
    """CPU seconds the tree used between two readings, and each live process's, largest first.

    A process first seen in ``after`` counts in full: it started inside the window.
    """
    per_process = [cpu - before.get(key, 0.0) for key, cpu in after.items()]
    return sum(after.values()) - sum(before.values()), sorted(per_process, reverse=True)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """CPU seconds every CPU of the machine has been busy since boot, and stolen by the host."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq, t.steal


def wait_quiet(limit_s: float) -> None:
    """Wait (at most ``limit_s``) until the machine's CPUs are idle but for ``BUSY_CORES``."""
    deadline, others = time.monotonic() + limit_s, 0.0
    while time.monotonic() < deadline:
        before = machine_cpu()[0]
        time.sleep(2)
        if (others := (machine_cpu()[0] - before) / 2) < BUSY_CORES:
            return
    if limit_s > 0:
        log(f"still {others:.2f} cores busy with other work after {limit_s:g} s; measuring anyway")


def stop_tree(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> int | None:
    """Stop a server as ``docker stop`` would: SIGTERM to the root, which should stop its own
    children within ``grace_s``; then SIGTERM to whatever is left of the tree, then SIGKILL.

    Returns:
        The root's exit status (negative: killed by that signal).
    """
    try:
        tree = [root := psutil.Process(process.pid), *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return process.wait()
    with contextlib.suppress(psutil.NoSuchProcess):
        root.terminate()
    psutil.wait_procs([root], timeout=grace_s)
    _, alive = psutil.wait_procs(tree, timeout=2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if alive:
            log(f"pids {[p.pid for p in alive]} outlived the server's own stop; {sig.name}")
        for member in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        _, alive = psutil.wait_procs(alive, timeout=5)
    return process.wait()


@dataclass
class Launch:
    """How to start one server, how to tell it is ready, where to POST."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: tuple[str, int]  # a path to GET and the status that means ready
    path: str

    def describe(self) -> str:
        """The command line, after the variables that size onnxkit."""
        sizing = ("ONNXKIT_WORKERS", "ONNXKIT_INTRA_OP_THREADS")
        settings = [f"{key}={self.env[key]}" for key in sizing if key in self.env]
        return " ".join([*settings, Path(self.argv[0]).name, *self.argv[1:]])


def launch_for(name: str, port: int, model: Path, workers: int, intra_op: int = 1) -> Launch:
    """Server ``name`` on ``port``: onnxkit with ``workers`` x ``intra_op`` threads, gunicorn
    with ``workers``, Flask and BentoML as their defaults have it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ONNXKIT_")}
    env |= {"PYTHONUNBUFFERED": "1", "BENCH_MODEL_PATH": str(model)}
    if name == "onnxkit":
        env |= {
            "ONNXKIT_MODEL_DIR": str(model.parent),
            "ONNXKIT_MODEL_NAME": model.parent.name,
            "ONNXKIT_BIND_HOST": LOOPBACK,
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "ONNXKIT_WORKERS": str(workers),
            "ONNXKIT_INTRA_OP_THREADS": str(intra_op),
        }
        argv = [sys.executable, "-m", "onnxkit.adapters.endpoint"]
        return Launch(name, argv, env, ("/ping", 200), "/invocations")
    venv = WORK / "bench-venvs" / VENVS[name] / "bin"
    if name == "bentoml":
        env |= {"BENTOML_HOME": str(WORK / "bench-venvs" / "bentoml-home")}
        env |= {"BENTOML_DO_NOT_TRACK": "True"}
        args = f"serve bento_service:OnnxService --host {LOOPBACK} --port {port}"
        return Launch(
            name, [str(venv / "bentoml"), *args.split()], env, ("/readyz", 200), "/predict"
        )
    if name == "flask":
        args = f"--app flask_app run --host {LOOPBACK} --port {port}"
    else:
        args = f"-b {LOOPBACK}:{port} -w {workers} --threads 4 flask_app:app"
    # The app has no health route: a 405 to GET /predict means it is up.
    return Launch(name, [str(venv / name), *args.split()], env, ("/predict", 405), "/predict")


@dataclass
class Running:
    """A started server: its process, and its exit status once stopped."""

    process: subprocess.Popen[bytes]
    exit_status: int | None = None


@contextlib.contextmanager
def serving(launch: Launch, port: int, log_path: Path) -> Iterator[Running]:
    """Start the server, wait until it is ready, yield it; stop it however the block ends.

    Raises:
        BenchError: It did not get ready (the log's tail is in the message).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            launch.argv, cwd=PEERS, env=launch.env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Running(process)
    try:
        path, status = launch.ready
        try:
            wait_http(
                f"http://{LOOPBACK}:{port}{path}",
                timeout_s=READY_TIMEOUT_S,
                process=process,
                status=status,
            )
        except TimeoutError as exc:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:])
            raise BenchError(f"{exc}; {log_path}:\n{tail}") from None
        yield server
    finally:
        server.exit_status = stop_tree(process)


def measure(
    name: str,
    workload: Workload,
    script: Path,
    args: Any,
    *,
    workers: int,
    intra_op: int = 1,
    timed: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start a server, check its answers, warm it up, then time it with CPU accounted around.

    ``timed(url)`` is what is timed (default: one wrk run at ``args.concurrency``). The rest
    of the machine's CPU ("others") leaves out the server, wrk and this process.

    Raises:
        BenchError: It did not get ready, answered wrongly or died under the load.
    """
    wait_quiet(args.wait_quiet)
    port = free_port()
    launch = launch_for(name, port, workload.model_path, workers, intra_op)
    url = f"http://{LOOPBACK}:{port}{launch.path}"
    with serving(launch, port, WORK / "bench-logs" / f"{name}.log") as server:
        check_answers(port, launch.path, workload)
        run_wrk(url, script, args.concurrency, args.warmup)
        root = psutil.Process(server.process.pid)
        tree0, wrk0 = tree_cpu(root), children_cpu()
        own0, machine0, started = time.process_time(), machine_cpu(), time.monotonic()
        if timed is None:
            result = parse_wrk(run_wrk(url, script, args.concurrency, args.seconds))
        else:
            result = timed(url)
        wall = time.monotonic() - started
        cpu, per_process = window_cpu(tree0, tree_cpu(root))
        wrk_cpu, own = children_cpu() - wrk0, time.process_time() - own0
        busy, steal = (now - then for now, then in zip(machine_cpu(), machine0, strict=True))
        if server.process.poll() is not None:
            raise BenchError(f"it exited with {server.process.returncode} under the load")
    return result | {
        "cpu_cores": cpu / wall,
        "cpu_cores_per_process": [round(c / wall, 3) for c in per_process],
        "wrk_cpu_cores": wrk_cpu / wall,
        "others_cpu_cores": max(0.0, busy - cpu - wrk_cpu - own) / wall,
        "steal_cores": steal / wall,
        "exit_status_on_sigterm": server.exit_status,
        "command": launch.describe(),
    }


def floor_session(model: Path, threads: int) -> Any:
    """An onnxruntime session with the endpoint worker's own options (full graph optimisation,
    sequential execution, spinning allowed) and ``threads`` intra-op threads."""
    from onnxkit.session import load_session

    return load_session(model, intra_op_threads=threads)


def run_floor(session: Any, feeds: list[dict[str, np.ndarray]], seconds: float) -> list[float]:
    """Milliseconds per bare ``session.run``, cycling ``feeds``, after one untimed pass."""
    for feed in feeds:
        session.run(None, feed)
    samples: list[float] = []
    until = time.perf_counter() + seconds
    while (started := time.perf_counter()) < until:
        session.run(None, feeds[len(samples) % len(feeds)])
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def ensure_venv(name: str, python: str) -> dict[str, Any]:
    """Make (or reuse) the peer venv ``name``; what is installed in it.

    Raises:
        BenchError: The interpreter is missing or pip failed (the tail of its log is quoted).
    """
    path = WORK / "bench-venvs" / name
    marker = path / ".bench-venv.json"  # written last: an interrupted install is redone
    if (
        marker.is_file()
        and (record := json.loads(marker.read_text()))["packages"] == PACKAGES[name]
    ):
        return record
    if shutil.which(python) is None:
        raise BenchError(f"{python} is not on PATH; pass --python to make the {name} venv")
    shutil.rmtree(path, ignore_errors=True)
    pip_log = path.with_suffix(".pip.log")
    pip_log.parent.mkdir(parents=True, exist_ok=True)
    log(f"installing {' '.join(PACKAGES[name])} into {path} (log: {pip_log})")
    started = time.monotonic()
    with pip_log.open("wb") as out:
        for argv in (
            [python, "-m", "venv", path],
            [path / "bin" / "pip", "install", *PACKAGES[name]],
        ):
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                tail = "\n".join(pip_log.read_text(errors="replace").splitlines()[-12:])
                raise BenchError(f"installing the {name} venv failed; {pip_log}:\n{tail}")
    freeze = subprocess.run(
        [path / "bin" / "pip", "freeze"], capture_output=True, text=True, check=True
    )
    pinned = dict(
        line.lower().split("==", 1) for line in freeze.stdout.splitlines() if "==" in line
    )
    record = {"packages": PACKAGES[name], "install_s": round(time.monotonic() - started, 1)}
    record["versions"] = {package: pinned.get(package) for package in PACKAGES[name]}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return record


# --- summaries --------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds (req/s with its min and max); the errors of all of them."""
    median = {key: statistics.median(r[key] for r in rounds) for key in ("p50_ms", "p99_ms")}
    rates = [r["req_per_s"] for r in rounds]
    return median | {
        "req_per_s": statistics.median(rates),
        "spread": f"{min(rates):,.0f}-{max(rates):,.0f}",
        "cpu_cores": statistics.median(r["cpu_cores"] for r in rounds),
        "wrk_cpu_cores": statistics.median(r["wrk_cpu_cores"] for r in rounds),
        "others_cpu_cores": max(r["others_cpu_cores"] for r in rounds),
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in rounds),
    }


def verdict(ratio: float, target: float, *, higher_is_better: bool = True) -> dict[str, Any]:
    """A ratio against its target: at least ``target`` (or at most, for latency) passes."""
    passed = ratio >= target if higher_is_better else ratio <= target
    return {"ratio": ratio, "target": target, "pass": passed}


def peer_ratios(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """onnxkit's median req/s over each measured peer's, against the peer's target."""
    if "onnxkit" not in summaries:
        return {}
    ours = summaries["onnxkit"]["req_per_s"]
    return {
        peer: verdict(ours / theirs["req_per_s"], TARGETS[peer])
        for peer, theirs in summaries.items()
        if peer in TARGETS and theirs["req_per_s"] > 0
    }


def latency_checks(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per configuration, over every floor/server pair of every round: the median latencies,
    the median of the pairs' ratios (server over floor) for p50 and p95 with their verdicts,
    and the most CPU other work took in any round."""
    checks = {}
    for config in rounds[0] if rounds else {}:
        pairs = [pair for r in rounds for pair in r[config]["pairs"]]
        check: dict[str, Any] = {
            key: statistics.median(pair[key] for pair in pairs) for key in pairs[0]
        }
        for q in ("p50", "p95"):
            ratios = [pair[f"server_{q}_ms"] / pair[f"floor_{q}_ms"] for pair in pairs]
            check[f"{q}_verdict"] = verdict(
                statistics.median(ratios), LATENCY_TARGET, higher_is_better=False
            ) | {"spread": f"{min(ratios):.2f}-{max(ratios):.2f}"}
        check["others_cpu_cores"] = max(r[config]["others_cpu_cores"] for r in rounds)
        checks[config] = check | {"rounds": [r[config] for r in rounds]}
    return checks


def render(report: dict[str, Any]) -> str:
    """The header and the tables."""

    def judged(v: dict[str, Any]) -> str:
        return f"{v['ratio']:5.2f}x {'PASS' if v['pass'] else 'FAIL'}"

    load = " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(*report["loadavg"], strict=True))
    lines = [
        f"{report['model']} {report['model_path']}, batch {report['batch']}; {report['wrk']}, "
        f"{report['concurrency']} keep-alive connections; {report['warmup']:g} s warm-up + "
        f"{report['seconds']:g} s per server, {report['rounds']} rounds interleaved",
        f"{CPUS} CPUs shared by the servers and wrk; load average before/after {load}",
        *(f"  {name:9} {e['command']}" for name, e in report["servers"].items() if "command" in e),
        "",
        f"{'server':9} {'req/s':>7} {'min-max':>13} {'p50 ms':>7} {'p99 ms':>7} {'CPU':>5} "
        f"{'wrk CPU':>7} {'others':>6} {'errors':>6}  req/s by round",
    ]
    for name, entry in report["servers"].items():
        if "failed" in entry:
            lines.append(f"{name:9} FAILED: {entry['failed']}")
        if "summary" in entry:
            s = entry["summary"]
            lines.append(
                f"{name:9} {s['req_per_s']:>7,.0f} {s['spread']:>13} {s['p50_ms']:>7.2f} "
                f"{s['p99_ms']:>7.2f} {s['cpu_cores']:>5.2f} {s['wrk_cpu_cores']:>7.2f} "
                f"{s['others_cpu_cores']:>6.2f} {s['errors']:>6}  "
                + " ".join(f"{r['req_per_s']:,.0f}" for r in entry["rounds"])
            )
    floor = report["floor"]
    lines.append(f"{'floor':9} {floor['runs_per_s']:>7,.0f} {floor['spread']:>13}  runs/s of bare ")
    lines[-1] += "InferenceSession.run in this process, 1 thread"
    lines += [
        "(CPU: cores the server's process tree used, wrk CPU: the load generator's, others: the"
        " rest of the machine in the busiest round; medians over rounds otherwise)",
        "",
        "CPU cores of each server process per round, largest first (others: the rest):",
    ]
    busy = 0
    for name, entry in report["servers"].items():
        for r in entry["rounds"]:
            shown = " + ".join(f"{c:.2f}" for c in r["cpu_cores_per_process"] if c >= 0.005)
            lines.append(f"  {name:9} {shown:24} others {r['others_cpu_cores']:.2f}")
            busy += r["others_cpu_cores"] > BUSY_CORES
    if busy:
        lines.append(f"  WARNING: other work took over {BUSY_CORES} cores in {busy} windows: rerun")
    if report["ratios"]:
        lines += ["", "onnxkit's median req/s over the peer's, against the target"]
        for peer, v in report["ratios"].items():
            label = f"{peer} ({report['workers']} workers each)" if peer == "gunicorn" else peer
            lines.append(f"  vs {label:26} {judged(v)} (target {v['target']:g}x)")
    if report["latency"]:
        lines += [
            "",
            f"MiniLM latency (ms), one connection, sequential requests, in {LATENCY_BLOCK_S:g} s "
            "blocks alternating with bare InferenceSession.run (same session options); ratio:",
            f"the median over pairs of server over floor; target {LATENCY_TARGET}x",
            f"  {'':38} {'server':>7} {'floor':>7}  p50 ratio  {'server':>7} {'floor':>7}"
            "  p95 ratio  others (most in a window)",
        ]
        for config, c in report["latency"].items():
            lines.append(
                f"  {config:38} {c['server_p50_ms']:>7.2f} {c['floor_p50_ms']:>7.2f} "
                f"{judged(c['p50_verdict'])}  {c['server_p95_ms']:>7.2f} "
                f"{c['floor_p95_ms']:>7.2f} {judged(c['p95_verdict'])}  {c['others_cpu_cores']:.2f}"
            )
            lines.append(
                f"    ratios of the {sum(len(r['pairs']) for r in c['rounds'])} pairs: p50 "
                f"{c['p50_verdict']['spread']}, p95 {c['p95_verdict']['spread']}"
            )
        if any(c["others_cpu_cores"] > BUSY_CORES for c in report["latency"].values()):
            lines.append(f"  WARNING: other work took over {BUSY_CORES} cores in a window: rerun")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; the module docstring is the --help text."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--model",
        choices=("digits", "minilm"),
        default="digits",
        help="digits int8 (default) or MiniLM int8",
    )
    add("--servers", default=",".join(SERVERS), help=f"comma list (default: {','.join(SERVERS)})")
    add(
        "--workers",
        type=int,
        default=CPUS,
        help=f"onnxkit's and gunicorn's (default {CPUS}: the CPUs)",
    )
    add("--batch", type=int, default=1, help="rows per request (default 1)")
    add("--concurrency", type=int, default=8, help="wrk's connections (default 8)")
    add("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    add("--seconds", type=float, default=10.0, help="timed seconds per measurement (default 10)")
    add("--warmup", type=float, default=2.0, help="untimed wrk seconds before each (default 2)")
    add("--wait-quiet", type=float, default=0, help="seconds to wait for other work to stop")
    add("--python", default="python3.11", help="makes the peer venvs (default python3.11)")
    add("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if not args.servers or not set(args.servers) <= set(SERVERS):
        parser.error(f"--servers: a comma list from {','.join(SERVERS)}")
    if min(args.workers, args.batch, args.concurrency, args.rounds) < 1 or args.seconds <= 0:
        parser.error("--workers, --batch, --concurrency, --rounds and --seconds must be positive")
    if shutil.which("wrk") is None:
        parser.exit(2, "bench_endpoint.py needs wrk: `apt-get install wrk` or `brew install wrk`\n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark: 0 when every selected server was measured, else 1."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        log("interrupted; every server started was stopped")
        return 130


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # unwinds through `serving`


def run(args: argparse.Namespace) -> int:
    """Prepare, measure round by round, print the tables, write the JSON."""
    loadavg = os.getloadavg()
    log(f"preparing {args.model}, batch {args.batch}, {DISTINCT} distinct bodies")
    workload = build_workload(args.model, args.batch)
    servers: dict[str, dict[str, Any]] = {name: {"rounds": []} for name in args.servers}
    venvs = {}
    for name in args.servers:
        if name in VENVS:
            try:
                venvs[VENVS[name]] = venvs.get(VENVS[name]) or ensure_venv(VENVS[name], args.python)
            except BenchError as exc:
                servers[name]["failed"] = f"venv: {exc}"
    floors, latency = [], []
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as scratch:
        scripts = {path: Path(scratch) / f"{path[1:]}.lua" for path in ("/invocations", "/predict")}
        for path, script in scripts.items():
            script.write_text(wrk_script(workload.bodies, path))
        for number in range(1, args.rounds + 1):
            wait_quiet(args.wait_quiet)
            samples = run_floor(
                floor_session(workload.model_path, 1), workload.feeds, FLOOR_SECONDS
            )
            floors.append(len(samples) / sum(samples) * 1000)
            for name in [n for n in args.servers if "failed" not in servers[n]]:
                log(f"round {number}/{args.rounds}: {name}")
                script = scripts["/invocations" if name == "onnxkit" else "/predict"]
                try:
                    result = measure(name, workload, script, args, workers=args.workers)
                except BenchError as exc:
                    log(f"{name} failed: {exc}")
                    servers[name]["failed"] = str(exc)
                    continue
                servers[name]["rounds"].append(result)
                servers[name]["command"] = result["command"]
                log(f"{name}: {result['req_per_s']:,.0f} req/s on {result['cpu_cores']:.2f} cores")
            if args.model == "minilm" and "onnxkit" in args.servers:
                latency.append(latency_round(workload, scripts["/invocations"], args))
    summaries = {}
    for name, entry in servers.items():
        if entry["rounds"] and "failed" not in entry:
            entry["summary"] = summaries[name] = summarize(entry["rounds"])
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    settings = ("model", "batch", "concurrency", "rounds", "seconds", "warmup", "workers")
    report = {key: getattr(args, key) for key in settings} | {
        "model_path": str(workload.model_path),
        "cpus": CPUS,
        "loadavg": [loadavg, os.getloadavg()],
        "wrk": wrk.stdout.split(" [")[0],
        "venvs": venvs,
        "floor": {"runs_per_s": statistics.median(floors), "by_round": floors}
        | {"spread": f"{min(floors):,.0f}-{max(floors):,.0f}"},
        "servers": servers,
        "ratios": peer_ratios(summaries),
        "latency": latency_checks(latency),
    }
    print(render(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if any("failed" in entry for entry in servers.values()) else 0


def latency_round(workload: Workload, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One round of the MiniLM check: per configuration, the server is started once, then blocks
    of bare ``InferenceSession.run`` (same options) and of sequential requests alternate, so
    both sides of a pair meet the same machine (its speed drifts; see :func:`paired_blocks`)."""
    one = argparse.Namespace(**(vars(args) | {"concurrency": 1}))
    blocks = max(1, round(args.seconds / LATENCY_BLOCK_S))
    out = {}
    for workers, intra_op in ((1, CPUS), (args.workers, 1)):
        config = f"{workers} worker(s) x {intra_op} intra-op thread(s)"
        session = floor_session(workload.model_path, intra_op)
        timed = partial(paired_blocks, session=session, feeds=workload.feeds, script=script)
        measured = measure(
            "onnxkit", workload, script, one, workers=workers, intra_op=intra_op,
            timed=partial(timed, blocks=blocks),
        )  # fmt: skip
        del session, timed  # its pool threads must not outlive this configuration
        out[config] = {key: measured[key] for key in ("pairs", "cpu_cores", "others_cpu_cores")}
        shown = (f"{p['server_p50_ms']:.2f}/{p['floor_p50_ms']:.2f}" for p in measured["pairs"])
        log(f"latency, {config}, p50 server/floor: {' '.join(shown)}")
    return out


def paired_blocks(
    url: str, *, session: Any, feeds: list[dict[str, np.ndarray]], script: Path, blocks: int
) -> dict[str, Any]:
    """``blocks`` pairs of a bare-run block and a one-connection wrk block, p50 and p95 each.

    The two CPUs of a small VM change speed by half for tens of seconds at a time (host side,
    no steal shown), so a floor measured a minute before the server would decide the ratio.
    """
    pairs = []
    for _ in range(blocks):
        floor = run_floor(session, feeds, LATENCY_BLOCK_S)
        server = parse_wrk(run_wrk(url, script, 1, LATENCY_BLOCK_S))
        pairs.append(
            {f"server_{q}_ms": server[f"{q}_ms"] for q in ("p50", "p95")}
            | {f"floor_{q}_ms": float(np.percentile(floor, int(q[1:]))) for q in ("p50", "p95")}
        )
    return {"pairs": pairs}


if __name__ == "__main__":
    sys.exit(main())

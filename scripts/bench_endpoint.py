"""Requests per second of onnxkit's endpoint server against BentoML and a tutorial Flask app.

Every server serves the same ONNX model on 127.0.0.1, one at a time, and is measured by the
same load generator at the same concurrency:

  onnxkit         `onnxkit local start-endpoint --model-dir DIR`, POST /invocations (the
                  SageMaker container's server, as shipped: 8 request threads)
  flask           scripts/peers/flask_app.py under `flask run` (threaded dev server, the way
                  most tutorials serve a model), POST /predict
  flask-gunicorn  the same app under `gunicorn -w 2 --threads 4` (gthread: keeps connections
                  alive), POST /predict
  bentoml         scripts/peers/bento_service.py under `bentoml serve` (1.x @bentoml.service,
                  onnxruntime inside, defaults: one worker), POST /predict

Request bodies are byte-identical for every server: Open Inference Protocol v2 JSON,
{"inputs": [{"name", "shape", "datatype", "data"}]}; the peers answer in the same
{"outputs": [...]} form as onnxkit. A pool of distinct requests (rows of the model's
validation set) is cycled, and every response is checked against onnxruntime run in this
process on the same rows: only 200s with the right predictions count; anything else is an
error, broken down by kind.

The client: one Python process, --concurrency threads, each with its own keep-alive
http.client.HTTPConnection, looping for --warmup seconds (not counted) then --seconds
(counted). It shares the machine's CPUs with the server unless --client-cpus says otherwise,
so its own CPU time per request is printed too: at a few hundred microseconds per request it
caps what any server can show, and the ratios are only meaningful well below that cap.

The floor: bare InferenceSession.run in this process, one thread, same batch, no HTTP.

The peers are installed with pip into their own venvs under --venv-dir (git-ignored; made
with --python -m venv, reused on later runs; the install time is printed). A peer that
cannot be installed or does not come up is skipped with the reason; the others are still
measured, and the exit status is then 1. Server logs go to --log-dir. Everything started is
stopped on exit (SIGTERM to the process tree, SIGKILL after a grace period).

Examples:

    .venv/bin/python scripts/bench_endpoint.py
    .venv/bin/python scripts/bench_endpoint.py --model minilm --batch 4 --seconds 20
    .venv/bin/python scripts/bench_endpoint.py --servers onnxkit,flask --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
HOST = "127.0.0.1"
SERVERS = ("onnxkit", "flask", "flask-gunicorn", "bentoml")
DEFAULT_SERVERS = SERVERS
PEER_PACKAGES: dict[str, tuple[str, ...]] = {
    "flask": ("flask", "gunicorn", "onnxruntime", "numpy"),
    "bentoml": ("bentoml", "onnxruntime", "numpy"),
}
VENV_MARKER = ".bench-venv.json"  # written last: its presence means the install completed
STOP_GRACE_SECONDS = 10.0
PIP_TIMEOUT_SECONDS = 900.0
FLOAT_RTOL = 1e-3
FLOAT_ATOL = 1e-4
SMALL_OUTPUT = 64  # elements; compared in pure Python, the client's CPU is shared
DTYPES: dict[str, type[np.generic]] = {"FP32": np.float32, "INT64": np.int64}
DATATYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


class BenchError(Exception):
    """A server (or its venv) could not be made ready; the message says why."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the workload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One output the server must return: integers exactly, floats within a tolerance."""

    name: str
    values: np.ndarray
    exact: list[Any] | None  # integer outputs as a list, compared with ==
    small: list[float] | None  # small float outputs as a list, compared without numpy


@dataclass(frozen=True)
class Workload:
    """The model and a pool of ready-made requests with their expected outputs."""

    model: str
    model_path: Path
    batch: int
    bodies: list[bytes]
    expected: list[list[Expected]]
    feeds: list[dict[str, np.ndarray]]

    @property
    def body_bytes(self) -> int:
        """The mean request body size in bytes."""
        return round(sum(map(len, self.bodies)) / len(self.bodies))


def load_model(model: str) -> tuple[Path, dict[str, np.ndarray]]:
    """The model file and its validation inputs (built and cached on first use)."""
    if model == "digits":
        from onnxkit_tools.local.s3 import default_model_dir

        folder = default_model_dir()
        with np.load(folder / "validation.npz") as data:
            return folder / "int8" / "model.onnx", {"input": data["input"].astype(np.float32)}
    from onnxkit_tools.examples.minilm import build_minilm, default_minilm_dir

    folder = default_minilm_dir()
    build_minilm(folder)
    with np.load(folder / "validation.npz") as data:
        inputs = {name: data[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    return folder / "fp32" / "model.onnx", inputs


def build_workload(model: str, batch: int, distinct: int) -> Workload:
    """``distinct`` requests of ``batch`` rows each, cycling through the validation rows.

    Args:
        model: ``digits`` or ``minilm``.
        batch: Rows per request.
        distinct: How many different requests to cycle through.
    """
    import onnxruntime as ort

    model_path, inputs = load_model(model)
    rows = len(next(iter(inputs.values())))
    session = ort.InferenceSession(str(model_path))
    output_names = [output.name for output in session.get_outputs()]
    bodies: list[bytes] = []
    expected: list[list[Expected]] = []
    feeds: list[dict[str, np.ndarray]] = []
    for index in range(distinct):
        picked = [(index * batch + offset) % rows for offset in range(batch)]
        feed = {name: values[picked] for name, values in inputs.items()}
        tensors = [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": DATATYPES[array.dtype],
                "data": array.ravel().tolist(),
            }
            for name, array in feed.items()
        ]
        bodies.append(json.dumps({"inputs": tensors}, separators=(",", ":")).encode())
        outputs = session.run(output_names, feed)
        expected.append(
            [
                Expected(
                    name,
                    values,
                    values.ravel().tolist() if values.dtype.kind in "iub" else None,
                    values.ravel().tolist() if values.size <= SMALL_OUTPUT else None,
                )
                for name, values in zip(output_names, outputs, strict=True)
            ]
        )
        feeds.append(feed)
    return Workload(model, model_path, batch, bodies, expected, feeds)


def check_response(body: bytes, expected: list[Expected]) -> str | None:
    """None when the response holds every expected output, else what is wrong."""
    try:
        outputs = {output["name"]: output["data"] for output in json.loads(body)["outputs"]}
    except (ValueError, KeyError, TypeError):
        return "bad json"
    for want in expected:
        got = outputs.get(want.name)
        if got is None:
            return f"missing {want.name}"
        try:
            if not _matches(got, want):
                return f"wrong {want.name}"
        except (TypeError, ValueError):  # not a flat list of numbers
            return f"malformed {want.name}"
    return None


def _matches(got: Any, want: Expected) -> bool:
    """Integers exactly; floats within FLOAT_RTOL/FLOAT_ATOL (pure Python when small)."""
    if want.exact is not None:
        return bool(got == want.exact)
    if len(got) != want.values.size:
        return False
    if want.small is not None:  # numpy costs more than the comparison at this size
        return all(
            abs(a - b) <= FLOAT_ATOL + FLOAT_RTOL * abs(b)
            for a, b in zip(got, want.small, strict=True)
        )
    return bool(
        np.allclose(
            np.asarray(got, np.float32), want.values.ravel(), rtol=FLOAT_RTOL, atol=FLOAT_ATOL
        )
    )


# --- the load generator -----------------------------------------------------------------------


@dataclass
class Measurement:
    """What one measured window of one server produced."""

    seconds: float
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0


def send(
    connection: http.client.HTTPConnection, path: str, body: bytes
) -> tuple[int, bytes, float]:
    """One POST on a kept-alive connection: (status, body, seconds)."""
    started = time.perf_counter()
    connection.request(
        "POST", path, body, {"Content-Type": "application/json", "Accept": "application/json"}
    )
    response = connection.getresponse()
    payload = response.read()
    return response.status, payload, time.perf_counter() - started


def run_load(
    port: int,
    path: str,
    workload: Workload,
    *,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    timeout_s: float,
    server_cpu: Callable[[], float],
) -> Measurement:
    """Drive the server with ``concurrency`` looping clients; count the measured window only.

    Requests that complete inside [start + warmup, start + warmup + seconds] are counted;
    a request is a success only when it is a 200 with the expected outputs.
    """
    started = time.monotonic()
    measure_from = started + warmup_s
    measure_until = measure_from + seconds
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[Counter[str]] = [Counter() for _ in range(concurrency)]

    def worker(number: int) -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
        pool = len(workload.bodies)
        index = number * (pool // max(concurrency, 1))
        try:
            while time.monotonic() < measure_until:
                slot = index % pool
                index += 1
                try:
                    status, payload, elapsed = send(connection, path, workload.bodies[slot])
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()  # the next request reconnects
                    if time.monotonic() >= measure_from:
                        errors[number][type(exc).__name__] += 1
                    time.sleep(0.01)  # a dead server must not turn this into a busy loop
                    continue
                done = time.monotonic()
                if not measure_from <= done <= measure_until:
                    continue
                problem = (
                    f"http {status}"
                    if status != 200
                    else check_response(payload, workload.expected[slot])
                )
                if problem is None:
                    samples[number].append(elapsed * 1000)
                else:
                    errors[number][problem] += 1
        finally:
            connection.close()

    threads = [
        threading.Thread(target=worker, args=(number,), daemon=True, name=f"client-{number}")
        for number in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.monotonic()))
    client_before, server_before = time.process_time(), server_cpu()
    time.sleep(max(0.0, measure_until - time.monotonic()))
    client_after, server_after = time.process_time(), server_cpu()
    for thread in threads:
        thread.join(timeout_s + 5)
    result = Measurement(seconds=seconds)
    for worker_samples, worker_errors in zip(samples, errors, strict=True):
        result.latencies_ms.extend(worker_samples)
        result.errors.update(worker_errors)
    result.ok = len(result.latencies_ms)
    result.client_cpu_s = client_after - client_before
    result.server_cpu_s = server_after - server_before
    return result


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples (NaN when there are none)."""
    if not sorted_samples:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def measure_floor(workload: Workload, seconds: float) -> dict[str, float]:
    """Bare ``InferenceSession.run`` in this process, one thread, cycling the same feeds."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(workload.model_path))
    feeds = workload.feeds
    for feed in feeds:
        session.run(None, feed)
    samples: list[float] = []
    until = time.perf_counter() + seconds
    index = 0
    while (started := time.perf_counter()) < until:
        session.run(None, feeds[index % len(feeds)])
        samples.append((time.perf_counter() - started) * 1000)
        index += 1
    samples.sort()
    return {
        "runs_per_s": len(samples) / (sum(samples) / 1000),
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
    }


# --- processes --------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> dict[int, str]:
    """The root and every descendant, each with its start time (to tell a reused PID)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        started[pid] = fields[19]
    tree: dict[int, str] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in started and pid not in tree:
            tree[pid] = started[pid]
            pending.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants (all threads)."""
    total = 0
    for pid in process_tree(root):
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def cpu_affinity(cpus: set[int]) -> Iterator[None]:
    """Run the block (and what it starts) on these CPUs; this thread's set is restored after."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


class Server:
    """One server subprocess: started in its own session, logged to a file, stopped for sure."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, cpus: set[int]) -> None:
        """Start it on ``cpus`` (its threads and children inherit the set)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file, cpu_affinity(cpus):
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The root process id."""
        assert self.process is not None
        return self.process.pid

    def exited(self) -> int | None:
        """The exit code once it has exited, else None."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its log, indented, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "\n".join(f"    {line}" for line in text) or "    (empty log)"

    def stop(self) -> None:
        """SIGTERM to the whole tree, SIGKILL to whatever is left after the grace period.

        The tree is read before the signal: children that start their own session (BentoML's
        workers do) are not in the root's process group and would be orphaned otherwise.
        """
        if self.process is None:
            return
        tree = process_tree(self.process.pid)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        while time.monotonic() < deadline and any(_alive(pid, when) for pid, when in tree.items()):
            time.sleep(0.1)
        for pid, when in tree.items():
            if _alive(pid, when):
                log(f"{self.name}: pid {pid} ignored SIGTERM; sending SIGKILL")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None


def _alive(pid: int, started: str) -> bool:
    """The process still exists, is the same one (start time), and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def wait_ready(server: Server, port: int, path: str, workload: Workload, timeout_s: float) -> float:
    """Poll with a real request until the server answers it correctly; seconds it took.

    Raises:
        BenchError: The process exited, or no correct answer came within ``timeout_s``.
    """
    started = time.monotonic()
    last = "no answer yet"
    while (waited := time.monotonic() - started) < timeout_s:
        code = server.exited()
        if code is not None:
            raise BenchError(
                f"{server.name} exited with status {code} before it served a request; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        connection = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            status, body, _ = send(connection, path, workload.bodies[0])
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                problem = check_response(body, workload.expected[0])
                if problem is None:
                    return waited
                raise BenchError(f"{server.name} answered 200 but the predictions are {problem}")
            last = f"HTTP {status}: {body[:200]!r}"
        finally:
            connection.close()
        time.sleep(0.25)
    raise BenchError(
        f"{server.name} did not serve a correct answer on port {port} within {timeout_s:.0f} s "
        f"(last: {last}); log {server.log_path}:\n{server.log_tail()}"
    )


# --- peer venvs -------------------------------------------------------------------------------


@dataclass
class Venv:
    """A peer's venv: where, what is in it, and what installing it cost."""

    name: str
    path: Path
    install_s: float
    installed_at: str
    reused: bool
    versions: dict[str, str]

    def bin(self, tool: str) -> str:
        """A console script of the venv."""
        return str(self.path / "bin" / tool)


def ensure_venv(root: Path, name: str, python: str, *, reinstall: bool) -> Venv:
    """Create (or reuse) ``root/name`` with the peer's packages.

    Raises:
        BenchError: The interpreter is missing or pip failed (the tail of its log is quoted).
    """
    packages = PEER_PACKAGES[name]
    path = root / name
    marker = path / VENV_MARKER
    if not reinstall and marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("packages") == list(packages):
            return Venv(
                name,
                path,
                record["install_s"],
                record["installed_at"],
                True,
                record["versions"],
            )
    if shutil.which(python) is None:
        raise BenchError(f"{python} is not on PATH; pass --python to make the {name} venv")
    shutil.rmtree(path, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    pip_log = root / f"{name}.pip.log"
    log(f"installing the {name} venv into {path} ({' '.join(packages)}); pip log: {pip_log}")
    started = time.monotonic()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with pip_log.open("wb") as out:
        for argv in (
            [python, "-m", "venv", str(path)],
            [str(path / "bin" / "pip"), "install", *packages],
        ):
            try:
                done = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=PIP_TIMEOUT_SECONDS
                )
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"{' '.join(argv[:3])} took over {PIP_TIMEOUT_SECONDS:.0f} s"
                ) from None
            if done.returncode != 0:
                tail = [
                    line
                    for line in pip_log.read_text(errors="replace").splitlines()
                    if "is ignored: it is neither" not in line  # this machine's missing indexes
                ][-12:]
                raise BenchError(
                    f"installing the {name} venv failed ({' '.join(argv[:3])} exited "
                    f"{done.returncode}); {pip_log}:\n" + "\n".join(f"    {t}" for t in tail)
                )
    install_s = time.monotonic() - started
    probe = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    versions = json.loads(
        subprocess.run(
            [str(path / "bin" / "python"), "-c", probe, *packages],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    installed_at = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "packages": list(packages),
        "install_s": round(install_s, 1),
        "installed_at": installed_at,
        "versions": versions,
    }
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return Venv(name, path, round(install_s, 1), installed_at, False, versions)


# --- the servers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to start one server and where to send requests."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    path: str
    describe: str


def base_env() -> dict[str, str]:
    """This process's environment without ONNXKIT_* (only what the bench sets reaches them)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ONNXKIT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_for(
    name: str, port: int, workload: Workload, venvs: dict[str, Venv], args: argparse.Namespace
) -> Launch:
    """The command line, environment and route of server ``name`` on ``port``."""
    env = base_env()
    model_path = str(workload.model_path)
    if name == "onnxkit":
        env["ONNXKIT_MODEL_NAME"] = workload.model
        return Launch(
            [
                args.onnxkit,
                "local",
                "start-endpoint",
                "--port",
                str(port),
                "--model-dir",
                str(workload.model_path.parent),
            ],
            env,
            REPO,
            "/invocations",
            "onnxkit local start-endpoint (ThreadingHTTPServer, 8 inference slots)",
        )
    env["BENCH_MODEL_PATH"] = model_path
    if name == "flask":
        venv = venvs["flask"]
        return Launch(
            [venv.bin("flask"), "--app", "flask_app", "run", "--host", HOST, "--port", str(port)],
            env,
            PEERS,
            "/predict",
            "flask run (Werkzeug dev server, threaded)",
        )
    if name == "flask-gunicorn":
        venv = venvs["flask"]
        return Launch(
            [
                venv.bin("gunicorn"),
                "--bind",
                f"{HOST}:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "flask_app:app",
            ],
            env,
            PEERS,
            "/predict",
            "gunicorn -w 2 --threads 4 (gthread), one model per worker",
        )
    venv = venvs["bentoml"]
    home = Path(args.venv_dir) / "bentoml-home"
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"})
    return Launch(
        [
            venv.bin("bentoml"),
            "serve",
            "bento_service:OnnxService",
            "--host",
            HOST,
            "--port",
            str(port),
            "--working-dir",
            str(PEERS),
        ],
        env,
        PEERS,
        "/predict",
        "bentoml serve (1 worker, defaults)",
    )


@dataclass
class ServerResult:
    """A server's measurements over every round, or why it has none."""

    name: str
    describe: str = ""
    rounds: list[Measurement] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)
    unavailable: str | None = None

    def summary(self, concurrency: int) -> dict[str, Any]:
        """Pooled numbers: req/s over all rounds' windows, percentiles over all samples."""
        latencies = sorted(ms for m in self.rounds for ms in m.latencies_ms)
        seconds = sum(m.seconds for m in self.rounds)
        ok = sum(m.ok for m in self.rounds)
        errors: Counter[str] = Counter()
        for m in self.rounds:
            errors.update(m.errors)
        requests = ok + sum(errors.values())
        client_cpu = sum(m.client_cpu_s for m in self.rounds)
        server_cpu = sum(m.server_cpu_s for m in self.rounds)
        return {
            "server": self.name,
            "describe": self.describe,
            "ok": ok,
            "req_per_s": ok / seconds if seconds else math.nan,
            "req_per_s_by_round": [round(m.ok / m.seconds, 1) for m in self.rounds],
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "errors": sum(errors.values()),
            "errors_by_kind": dict(errors),
            "server_cpu_cores": server_cpu / seconds if seconds else math.nan,
            "client_cpu_cores": client_cpu / seconds if seconds else math.nan,
            "client_cpu_ms_per_req": client_cpu * 1000 / requests if requests else math.nan,
            "seconds_to_ready": self.ready_s,
            "concurrency": concurrency,
        }


def measure_server(
    name: str,
    workload: Workload,
    venvs: dict[str, Venv],
    args: argparse.Namespace,
    running: list[Server],
) -> tuple[Measurement, float, str]:
    """Start one server, wait until it answers correctly, warm it, measure it, stop it.

    Raises:
        BenchError: It did not come up.
    """
    port = free_port()
    launch = launch_for(name, port, workload, venvs, args)
    server = Server(name, launch.argv, launch.env, launch.cwd, Path(args.log_dir) / f"{name}.log")
    log(f"{name}: starting on {HOST}:{port}: {' '.join(launch.argv)}")
    running.append(server)
    try:
        server.start(args.server_cpus)
        ready = wait_ready(server, port, launch.path, workload, args.startup_timeout)
        log(
            f"{name}: ready after {ready:.1f} s; warm-up {args.warmup:g} s then "
            f"{args.seconds:g} s measured at concurrency {args.concurrency}"
        )
        with cpu_affinity(args.client_cpus):
            measurement = run_load(
                port,
                launch.path,
                workload,
                concurrency=args.concurrency,
                warmup_s=args.warmup,
                seconds=args.seconds,
                timeout_s=args.request_timeout,
                server_cpu=lambda: tree_cpu_seconds(server.pid),
            )
        if server.exited() is not None:
            raise BenchError(
                f"{name} exited (status {server.exited()}) during the measurement; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        log(
            f"{name}: {measurement.ok / measurement.seconds:.1f} req/s, "
            f"{sum(measurement.errors.values())} errors"
        )
        return measurement, ready, launch.describe
    finally:
        server.stop()
        running.remove(server)


# --- report -----------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    """A number with thousands separators, or ``-`` for NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The human-readable tables."""
    config = report["config"]
    lines = [
        f"{config['model']} ({Path(config['model_path']).parent.name}/"
        f"{Path(config['model_path']).name}), batch {config['batch']}, concurrency "
        f"{config['concurrency']}, {config['seconds']:g} s measured per server per round "
        f"(+{config['warmup']:g} s warm-up), {config['rounds']} round(s)",
        f"CPUs: server {config['server_cpus']}, client {config['client_cpus']} "
        f"(machine: {config['cpu_count']}; load average before: {config['loadavg_before']}); "
        f"request body {config['body_bytes']} B, identical for every server",
        "",
        f"{'server':15} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'srv CPU':>8} {'cli CPU':>8} {'cli ms/req':>10}",
    ]
    for row in report["servers"]:
        if row.get("unavailable"):
            reason = row["unavailable"].splitlines()[0].split("; log ")[0]
            lines.append(f"{row['server']:15} skipped: {reason}")
            continue
        lines.append(
            f"{row['server']:15} {_fmt(row['req_per_s']):>9} {_fmt(row['p50_ms'], 2):>8} "
            f"{_fmt(row['p95_ms'], 2):>8} {_fmt(row['p99_ms'], 2):>8} {row['errors']:>7} "
            f"{_fmt(row['server_cpu_cores'], 2):>8} {_fmt(row['client_cpu_cores'], 2):>8} "
            f"{_fmt(row['client_cpu_ms_per_req'], 3):>10}"
        )
    floor = report["floor"]
    lines += [
        "(srv/cli CPU: cores busy on average in the window; cli ms/req: the client's own CPU "
        "per request)",
        "",
        f"floor: bare InferenceSession.run in-process, one thread, batch {config['batch']}: "
        f"{_fmt(floor['runs_per_s'])} runs/s (p50 {_fmt(floor['p50_ms'], 3)} ms)",
    ]
    if report["ratios"]:
        lines += [
            "",
            f"{'onnxkit vs':15} {'req/s ratio':>12} {'p50 ratio':>10}   "
            "(req/s > 1: onnxkit serves more; p50 < 1: onnxkit answers faster)",
        ]
        for peer, ratio in report["ratios"].items():
            lines.append(
                f"{peer:15} {_fmt(ratio['req_per_s'], 2) + 'x':>12} "
                f"{_fmt(ratio['p50'], 2) + 'x':>10}"
            )
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def parse_cpus(raw: str) -> set[int]:
    """``0,1`` or ``0-3`` -> a set of CPU numbers."""
    cpus: set[int] = set()
    for part in raw.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise argparse.ArgumentTypeError("no CPUs given")
    return cpus


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring, which --help prints)."""
    allowed = sorted(os.sched_getaffinity(0))
    default_cpus = ",".join(map(str, allowed[:2]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        choices=("digits", "minilm"),
        default="digits",
        help="digits int8 MLP (default) or MiniLM-L6 fp32 sentence embeddings",
    )
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="client threads, one keep-alive connection each (default 8)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="measured seconds per server per round (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="uncounted seconds of full load before measuring (default 2)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="start/measure/stop every server this many times, interleaved, and "
        "pool the results (evens out a noisy shared machine; default 1)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma list from {', '.join(SERVERS)} (default: "
        f"{','.join(DEFAULT_SERVERS)}); ratios need onnxkit",
    )
    parser.add_argument(
        "--server-cpus",
        type=parse_cpus,
        default=parse_cpus(default_cpus),
        help=f"CPUs each server is pinned to (default {default_cpus}: two cores)",
    )
    parser.add_argument(
        "--client-cpus",
        type=parse_cpus,
        default=None,
        help="CPUs the load generator is pinned to (default: the server's, so "
        "the client competes with the server as a sidecar would)",
    )
    parser.add_argument(
        "--distinct", type=int, default=32, help="distinct requests cycled through (default 32)"
    )
    parser.add_argument(
        "--floor-seconds",
        type=float,
        default=3.0,
        help="seconds of the bare InferenceSession.run loop (default 3)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        help="seconds a server has to answer its first request (default 120)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="client socket timeout per request, seconds (default 30)",
    )
    parser.add_argument(
        "--onnxkit",
        default=str(REPO / ".venv" / "bin" / "onnxkit"),
        help="the onnxkit executable to serve with (default: this repo's .venv)",
    )
    parser.add_argument(
        "--python",
        default="python3.11",
        help="interpreter that makes the peer venvs (default python3.11)",
    )
    parser.add_argument(
        "--venv-dir",
        default=str(REPO / ".onnxkit" / "bench-venvs"),
        help="where the peer venvs live (default .onnxkit/bench-venvs, ignored by git)",
    )
    parser.add_argument(
        "--reinstall", action="store_true", help="remake the peer venvs even if they exist"
    )
    parser.add_argument(
        "--log-dir",
        default=str(REPO / ".onnxkit" / "bench-logs"),
        help="server logs, one file per server (default .onnxkit/bench-logs)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the configuration, every number and the ratios here",
    )
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown or not args.servers:
        parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")
    for name in ("batch", "concurrency", "rounds", "distinct"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    if args.client_cpus is None:
        args.client_cpus = args.server_cpus
    for option in ("server_cpus", "client_cpus"):
        outside = getattr(args, option) - set(allowed)
        if outside:
            parser.error(f"--{option.replace('_', '-')}: CPUs {sorted(outside)} not available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every server was measured, 1 when one was skipped."""
    args = parse_args(argv)

    def on_term(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_term)
    running: list[Server] = []
    try:
        return _run(args, running)
    except KeyboardInterrupt:
        log("interrupted; stopping the servers")
        return 130
    finally:
        for server in list(running):
            server.stop()


def _run(args: argparse.Namespace, running: list[Server]) -> int:
    """Prepare, install, measure the floor and every server, print and write the report."""
    import onnxruntime as ort

    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    log(f"load average before the run: {' '.join(loadavg)} ({os.cpu_count()} CPUs)")
    log(f"preparing {args.model} requests (batch {args.batch}, {args.distinct} distinct)")
    workload = build_workload(args.model, args.batch, args.distinct)

    venvs: dict[str, Venv] = {}
    results = {name: ServerResult(name) for name in args.servers}
    for venv_name in dict.fromkeys(
        "flask" if name.startswith("flask") else name for name in args.servers
    ):
        if venv_name == "onnxkit":
            continue
        try:
            venv = ensure_venv(
                Path(args.venv_dir), venv_name, args.python, reinstall=args.reinstall
            )
        except BenchError as exc:
            log(f"skipping {venv_name}: {exc}")
            for name in args.servers:
                if name == venv_name or (venv_name == "flask" and name.startswith("flask")):
                    results[name].unavailable = f"venv: {exc}"
            continue
        venvs[venv_name] = venv
        how = "reused" if venv.reused else "installed"
        log(
            f"{venv_name} venv {how} (install took {venv.install_s:.1f} s on "
            f"{venv.installed_at}): "
            + ", ".join(f"{package} {version}" for package, version in venv.versions.items())
        )

    with cpu_affinity(args.server_cpus):
        log(f"floor: bare InferenceSession.run for {args.floor_seconds:g} s")
        floor = measure_floor(workload, args.floor_seconds)

    for round_number in range(1, args.rounds + 1):
        for name in args.servers:
            result = results[name]
            if result.unavailable:
                continue
            if args.rounds > 1:
                log(f"round {round_number}/{args.rounds}: {name}")
            try:
                measurement, ready, describe = measure_server(name, workload, venvs, args, running)
            except BenchError as exc:
                log(f"skipping {name}: {exc}")
                result.unavailable = str(exc)
                continue
            result.describe = describe
            result.rounds.append(measurement)
            result.ready_s.append(round(ready, 2))

    rows: list[dict[str, Any]] = []
    for result in results.values():
        if result.unavailable:
            rows.append({"server": result.name, "unavailable": result.unavailable})
        else:
            rows.append(result.summary(args.concurrency))
    by_name = {row["server"]: row for row in rows if not row.get("unavailable")}
    ratios: dict[str, dict[str, float]] = {}
    if "onnxkit" in by_name:
        ours = by_name["onnxkit"]
        for peer, row in by_name.items():
            if peer != "onnxkit":
                ratios[peer] = {
                    "req_per_s": ours["req_per_s"] / row["req_per_s"]
                    if row["req_per_s"]
                    else math.nan,
                    "p50": ours["p50_ms"] / row["p50_ms"] if row["p50_ms"] else math.nan,
                }
    report: dict[str, Any] = {
        "config": {
            "model": args.model,
            "model_path": str(workload.model_path),
            "batch": args.batch,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "distinct_requests": args.distinct,
            "body_bytes": workload.body_bytes,
            "server_cpus": ",".join(map(str, sorted(args.server_cpus))),
            "client_cpus": ",".join(map(str, sorted(args.client_cpus))),
            "cpu_count": os.cpu_count(),
            "loadavg_before": " ".join(loadavg),
            "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "client": "python http.client, one keep-alive connection per thread",
            "onnxruntime_here": ort.__version__,
            "python": sys.version.split()[0],
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "venvs": {name: asdict(venv) | {"path": str(venv.path)} for name, venv in venvs.items()},
        "floor": floor,
        "servers": rows,
        "ratios": ratios,
    }
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    skipped = [row["server"] for row in rows if row.get("unavailable")]
    if skipped:
        for row in rows:
            if row.get("unavailable"):
                print(f"\n{row['server']} was not measured: {row['unavailable']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/bench_endpoint.py's own logic: wrk's script and summary, CPU accounting, verdicts."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location(
    "bench_endpoint", REPO / "scripts" / "bench_endpoint.py"
)
assert spec is not None
assert spec.loader is not None
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def lua_strings(script: str) -> list[str]:
    """Every long-bracket string of a Lua script, read the way Lua reads them."""
    found, at = [], 0
    while (start := script.find("[", at)) != -1:
        level = 0
        while script[start + 1 + level : start + 2 + level] == "=":
            level += 1
        if script[start + 1 + level : start + 2 + level] != "[":
            at = start + 1
            continue
        body_from = start + 2 + level
        end = script.index(f"]{'=' * level}]", body_from)
        found.append(script[body_from:end].removeprefix("\n"))
        at = end + level + 2
    return found


# --- the wrk script ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["{}", "a]]b", "x]=]y]]", "ends]", "ends]=", '{"q":"]==]"}'])
def test_lua_string_reads_back_as_the_same_text(text: str) -> None:
    assert lua_strings(bench.lua_string(text)) == [text]


def test_lua_string_refuses_a_carriage_return() -> None:
    with pytest.raises(ValueError, match="CR"):
        bench.lua_string("a\r\nb")


def test_wrk_script_holds_every_body_in_order_with_the_route_and_headers() -> None:
    bodies = [json.dumps({"inputs": [{"data": [n, "]]"]}]}).encode() for n in range(5)]

    script = bench.wrk_script(bodies, "/invocations")

    assert lua_strings(script) == [body.decode() for body in bodies]
    assert 'wrk.format("POST", "/invocations"' in script
    assert '["Content-Type"] = "application/json"' in script
    assert bench.WRK_MARKER in script


WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/invocations
  2 threads and 8 connections
  Non-2xx or 3xx responses: 20
Requests/sec:   2000.00
@@wrk-json {"requests":20000,"duration_us":10000000,"connect":0,"read":2,"write":0,\
"status":20,"timeout":1,"latency_us":{"mean":1234.5,"max":9000,"p50":1000,"p90":2000,\
"p95":2500,"p99":4000}}
"""


def test_parse_wrk_counts_only_ok_answers_and_converts_to_ms() -> None:
    result = bench.parse_wrk(WRK_OUTPUT)

    assert result["requests"] == 20000
    assert result["ok"] == 19980
    assert result["non_2xx"] == 20
    assert result["socket_errors"] == 3
    assert result["req_per_s"] == pytest.approx(1998.0)
    assert result["p50_ms"] == pytest.approx(1.0)
    assert result["p99_ms"] == pytest.approx(4.0)
    assert result["mean_ms"] == pytest.approx(1.2345)


def test_parse_wrk_without_a_summary_line_says_what_wrk_printed() -> None:
    with pytest.raises(bench.BenchError, match="unable to connect"):
        bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[bytes]]]:
    """A keep-alive HTTP server on loopback that records bodies; body ``"bad"`` gets a 503."""
    seen: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(body)
            self.send_response(503 if body == b'"bad"' else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/predict", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_cycles_through_the_bodies_and_counts_non_2xx(
    recording_server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    # GIVEN three bodies, one of which the server refuses
    url, seen = recording_server
    bodies = [b'"first"', b'"bad"', b'"third"']
    script = tmp_path / "bench.lua"
    script.write_text(bench.wrk_script(bodies, "/predict"))

    # WHEN one wrk connection runs the script
    result = bench.parse_wrk(bench.run_wrk(url, script, connections=1, seconds=1))

    # THEN the server saw the bodies in turn (wrk spends thread 0's first request() on a
    # check of its own), and the refusals are not counted as OK
    assert result["requests"] >= 6
    turns = [bodies.index(body) for body in seen[:6]]
    assert turns == [(turns[0] + step) % 3 for step in range(6)]
    assert result["non_2xx"] == seen[: result["requests"]].count(b'"bad"')
    assert result["ok"] == result["requests"] - result["non_2xx"]


# --- process accounting -----------------------------------------------------------------------

# On "go": a child burns CPU and exits (reaped), a second burns and stays; both print their CPU.
TREE = textwrap.dedent(
    """
    import subprocess, sys
    burn = "import time\\nwhile time.process_time() < 0.3: pass\\n"
    burn += "print(time.process_time(), flush=True)"
    sys.stdin.readline()
    first = subprocess.run([sys.executable, "-c", burn], capture_output=True, text=True)
    stays = subprocess.Popen(
        [sys.executable, "-c", burn + "\\nimport sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    print(stays.pid, float(first.stdout), float(stays.stdout.readline()), flush=True)
    sys.stdin.read()
    """
)


def test_tree_cpu_counts_children_that_start_and_exit_inside_the_window() -> None:
    # GIVEN a process with no children yet
    parent = subprocess.Popen(
        [sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        root = psutil.Process(parent.pid)
        before = bench.tree_cpu(root)

        # WHEN it starts one child that exits and one that stays, both burning CPU
        assert parent.stdin is not None
        assert parent.stdout is not None
        parent.stdin.write("go\n")
        parent.stdin.flush()
        stays_pid, first_cpu, stays_cpu = parent.stdout.readline().split()
        after = bench.tree_cpu(root)

        # THEN both children's CPU is in the window (less at most a clock tick each)
        total, per_process = bench.window_cpu(before, after)
        assert int(stays_pid) in {pid for pid, _ in after}
        assert total >= float(first_cpu) + float(stays_cpu) - 0.05
        assert sum(per_process) == pytest.approx(total)
        assert per_process == sorted(per_process, reverse=True)
    finally:
        bench.stop_tree(parent, grace_s=5)
    assert not psutil.pid_exists(int(stays_pid)) or psutil.Process(int(stays_pid)).status() in (
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    )


def test_window_cpu_drops_a_vanished_process_and_counts_a_new_one_in_full() -> None:
    before = {(1, 0.0): 5.0, (2, 0.0): 1.0}
    after = {(1, 0.0): 7.5, (3, 9.0): 0.5}  # pid 2 was reaped by pid 1: its 1.5 s are in pid 1

    total, per_process = bench.window_cpu(before, after)

    assert total == pytest.approx(2.0)
    assert per_process == [2.5, 0.5]


# --- correctness and verdicts -----------------------------------------------------------------

EXPECTED = {"label": np.array([3], np.int64), "probabilities": np.array([[0.25, 0.75]], np.float32)}


def reply(label: list[int], probabilities: list[float]) -> dict:
    return {
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [1], "data": label},
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": probabilities},
        ]
    }


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (reply([3], [0.25, 0.75]), None),
        (reply([3], [0.2501, 0.7502]), None),
        (reply([4], [0.25, 0.75]), "label"),
        (reply([3], [0.26, 0.75]), "off by up to"),
        ({"outputs": reply([3], [0.25, 0.75])["outputs"][:1]}, "no output 'probabilities'"),
        ({"outputs": [{"name": "label", "shape": [2], "data": [3]}]}, "malformed"),
        ({"error": {"code": "x"}}, "malformed"),
    ],
)
def test_compare_outputs(answer: dict, problem: str | None) -> None:
    found = bench.compare_outputs(answer, EXPECTED)
    if problem is None:
        assert found is None
    else:
        assert problem in found


def test_peer_ratios_pass_at_the_target_and_fail_below() -> None:
    summaries = {
        "onnxkit": {"req_per_s": 3000.0},
        "gunicorn": {"req_per_s": 2000.0},  # exactly 1.5x
        "flask": {"req_per_s": 1000.0},  # exactly 3x
        "bentoml": {"req_per_s": 1001.0},  # just under 3x
    }

    ratios = bench.peer_ratios(summaries)

    assert {peer: v["pass"] for peer, v in ratios.items()} == {
        "gunicorn": True,
        "flask": True,
        "bentoml": False,
    }
    assert ratios["gunicorn"]["ratio"] == pytest.approx(1.5)
    assert bench.peer_ratios({"flask": {"req_per_s": 1.0}}) == {}


def test_summarize_takes_medians_and_the_spread_over_rounds() -> None:
    rounds = [
        {"req_per_s": r, "p50_ms": p, "p99_ms": 2 * p, "cpu_cores": c, "wrk_cpu_cores": 0.3}
        | {"non_2xx": 1, "socket_errors": 0, "others_cpu_cores": c / 10}
        for r, p, c in ((4000.0, 1.0, 1.4), (2100.0, 3.0, 1.0), (3900.0, 2.0, 1.3))
    ]

    summary = bench.summarize(rounds)

    assert summary["req_per_s"] == 3900.0
    assert summary["spread"] == "2,100-4,000"
    assert summary["p50_ms"] == 2.0
    assert summary["cpu_cores"] == 1.3
    assert summary["others_cpu_cores"] == pytest.approx(0.14)  # the busiest round's
    assert summary["errors"] == 3


def test_latency_checks_take_the_median_of_paired_ratios() -> None:
    # GIVEN three rounds of one configuration whose machine halves its speed now and then:
    # the floor and the server of a pair always see the same speed
    config = "1 worker(s) x 2 intra-op thread(s)"
    speeds = [(1.0, 1.0), (1.6, 1.0), (1.0, 1.6)]  # per round: first pair, second pair

    def pair(speed: float, overhead: float) -> dict[str, float]:
        return {
            "server_p50_ms": 8 * speed * overhead,
            "server_p95_ms": 9 * speed * overhead,
            "floor_p50_ms": 8 * speed,
            "floor_p95_ms": 9 * speed,
        }

    rounds = [
        {config: {"pairs": [pair(a, 1.1), pair(b, 1.1)], "others_cpu_cores": others}}
        for (a, b), others in zip(speeds, (0.0, 0.3, 0.01), strict=True)
    ]

    # WHEN they are summarized
    check = bench.latency_checks(rounds)[config]

    # THEN the verdict rests on the pairs' ratios, not on medians taken apart
    assert check["p50_verdict"]["ratio"] == pytest.approx(1.1)
    assert check["p50_verdict"]["pass"] is True
    assert check["p95_verdict"]["spread"] == "1.10-1.10"
    assert check["floor_p50_ms"] == pytest.approx(8.0)
    assert check["others_cpu_cores"] == 0.3  # the busiest round, not a median


def test_latency_verdict_fails_above_the_target() -> None:
    assert bench.verdict(1.15, 1.15, higher_is_better=False)["pass"] is True
    assert bench.verdict(1.16, 1.15, higher_is_better=False)["pass"] is False


def test_launch_sizes_onnxkit_and_gunicorn_alike_and_drops_inherited_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONNXKIT_SERVER_THREADS", "8")
    model = Path("/models/digits/model.onnx")

    onnxkit = bench.launch_for("onnxkit", 9000, model, workers=3)
    gunicorn = bench.launch_for("gunicorn", 9001, model, workers=3)

    assert onnxkit.env["ONNXKIT_WORKERS"] == "3"
    assert onnxkit.env["ONNXKIT_INTRA_OP_THREADS"] == "1"
    assert onnxkit.env["SAGEMAKER_BIND_TO_PORT"] == "9000"
    assert onnxkit.env["ONNXKIT_MODEL_DIR"] == "/models/digits"
    assert "ONNXKIT_SERVER_THREADS" not in onnxkit.env
    assert " ".join(gunicorn.argv[1:]) == "-b 127.0.0.1:9001 -w 3 --threads 4 flask_app:app"
    assert onnxkit.describe().startswith("ONNXKIT_WORKERS=3 ONNXKIT_INTRA_OP_THREADS=1 ")

"""Run the function locally as Lambda does, without Docker: the Runtime Interface Emulator.

The emulator (``aws-lambda-rie``) ships inside the aws-sam-cli package. It is started bound
to 127.0.0.1 only, drives the real ``awslambdaric`` runtime client, and the function's code
is laid out as the Dockerfile lays it out: ``app.py`` in ``LAMBDA_TASK_ROOT``, the onnxkit
package installed in the interpreter's site-packages.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from onnxkit_tools.net import free_port

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
HANDLER = "app.lambda_handler"


class EmulatorError(RuntimeError):
    """The emulator could not be found, started, or reached."""


def find_rie(repo_root: Path | None = None) -> Path:
    """Locate ``aws-lambda-rie-<arch>`` inside an installed aws-sam-cli.

    Looks at ``$ONNXKIT_RIE``, then the ``sam`` of ``<repo>/.venv-sam`` (what ``make setup``
    creates), then ``sam`` on PATH, asking that install's Python where ``samcli`` lives.

    Raises:
        EmulatorError: No emulator binary was found; the message says how to get one.
    """
    explicit = os.environ.get("ONNXKIT_RIE")
    if explicit:
        if Path(explicit).is_file():
            return Path(explicit)
        raise EmulatorError(f"ONNXKIT_RIE={explicit} does not exist")
    arch = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    candidates = []
    root = repo_root or Path.cwd()
    candidates.append(root / ".venv-sam" / "bin" / "sam")
    on_path = shutil.which("sam")
    if on_path:
        candidates.append(Path(on_path))
    for sam in candidates:
        python = _interpreter_of(sam)
        if python is None:
            continue
        found = subprocess.run(
            [python, "-c", "import os, samcli; print(os.path.dirname(samcli.__file__))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode == 0:
            rie = Path(found.stdout.strip()) / "local" / "rapid" / f"aws-lambda-rie-{arch}"
            if rie.is_file():
                return rie
    raise EmulatorError(
        "cannot find the Lambda Runtime Interface Emulator: install aws-sam-cli "
        "(`make setup` puts it in .venv-sam) or set ONNXKIT_RIE to the aws-lambda-rie binary"
    )


def _interpreter_of(script: Path) -> str | None:
    """The Python that runs a console script (from its shebang)."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0].decode()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    python = first[2:].strip().split()[0]
    return python if Path(python).exists() else None


class Emulator:
    """One emulated execution environment for the function (one invoke at a time).

    Use as a context manager. Function logs go to ``log`` (default: stderr) so that stdout
    stays free for responses.

    Args:
        function_dir: Folder with ``app.py`` (``functions/predict``).
        env: The function's environment variables (added to a minimal base).
        rie: The emulator binary (default: :func:`find_rie`).
        python: The interpreter that runs ``awslambdaric`` (default: this one).
        memory_mb: Reported as the function's memory size.
        timeout_s: The function's timeout.
        log: Where the emulator's and the function's output goes.
    """

    def __init__(
        self,
        function_dir: Path,
        env: dict[str, str],
        *,
        rie: Path | None = None,
        python: str = sys.executable,
        memory_mb: int = 2048,
        timeout_s: int = 30,
        log: IO[Any] | None = None,
    ) -> None:
        if not (function_dir / "app.py").is_file():
            raise EmulatorError(f"{function_dir}/app.py not found; run from the repository root")
        self._function_dir = function_dir
        self._env = env
        self._rie = rie
        self._python = python
        self._memory_mb = memory_mb
        self._timeout_s = timeout_s
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._task_root: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Lay out the task root, start the emulator on loopback, wait until it listens."""
        rie = self._rie or find_rie()
        self._task_root = tempfile.TemporaryDirectory(prefix="onnxkit-task-")
        task_root = Path(self._task_root.name)
        shutil.copy2(self._function_dir / "app.py", task_root / "app.py")  # as the Dockerfile does
        self.port = free_port()
        runtime_api = f"127.0.0.1:{free_port()}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", tempfile.gettempdir()),
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
            "LAMBDA_TASK_ROOT": str(task_root),
            "PYTHONPATH": str(task_root),
            "AWS_LAMBDA_FUNCTION_NAME": "PredictFunction",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self._memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self._timeout_s),
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            # Local runs never reach AWS: fake credentials, no X-Ray daemon.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_SERVICE_NAME": "onnxkit",
            "POWERTOOLS_METRICS_NAMESPACE": "Onnxkit",
            "LOG_LEVEL": "warn",  # the emulator's own chatter
        }
        env.update(self._env)
        self._process = subprocess.Popen(
            [
                str(rie),
                "--runtime-interface-emulator-address",
                f"127.0.0.1:{self.port}",
                "--runtime-api-address",
                runtime_api,
                self._python,
                "-m",
                "awslambdaric",
                HANDLER,
            ],
            cwd=task_root,
            env=env,
            stdout=self._log or sys.stderr,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorError(f"the emulator exited with {self._process.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise EmulatorError("the emulator did not start listening within 10 s")

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """Invoke the function with an event; return its JSON response.

        Raises:
            EmulatorError: The emulator is not running or the response is not JSON.
        """
        if self._process is None or self._process.poll() is not None:
            raise EmulatorError("the emulator is not running")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{INVOKE_PATH}",
            data=json.dumps(event).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s + 30) as reply:  # noqa: S310
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
        except OSError as exc:
            raise EmulatorError(f"cannot reach the emulator: {exc}") from exc
        try:
            result = json.loads(raw)
        except ValueError as exc:
            raise EmulatorError(f"the emulator answered with non-JSON: {raw[:200]!r}") from exc
        if not isinstance(result, dict):
            raise EmulatorError(f"the function returned {type(result).__name__}, not an object")
        return result

    def stop(self) -> None:
        """Stop the emulator (and with it the runtime) and remove the task root."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._task_root is not None:
            self._task_root.cleanup()
            self._task_root = None

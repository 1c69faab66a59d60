"""Echoed walkthroughs (``make demo``, ``make example-keras``): every step is a real ``onnxkit``
command, printed exactly as it runs from the repository root (after the ``export`` line of the
only variables set), so each can be pasted; whatever was started is stopped at the end."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from onnxkit_tools.net import wait_http

ONNXKIT = Path(sys.executable).parent / "onnxkit"


class Walkthrough:
    """Runs and echoes ``onnxkit`` commands from ``repo`` with ``exported`` as the only AWS and
    ONNXKIT variables (the shell's own are dropped, so nothing reaches a real account).

    Use as a context manager: background commands are stopped on the way out.
    """

    def __init__(self, repo: Path, exported: dict[str, str]) -> None:
        self.repo = repo
        self.exported = dict(exported)
        self.shown = os.path.relpath(ONNXKIT, repo)  # how the echoed commands call it
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONNXKIT_"))}
        self.env.update(self.exported)
        self._started: list[subprocess.Popen[bytes]] = []

    @classmethod
    def on_local_s3(cls, repo: Path, s3_port: int) -> Walkthrough:
        """Local only: fake credentials and S3 on a moto server at ``s3_port``; nothing reaches
        AWS. These are the only variables set, and they are echoed, so every command can be
        repeated."""
        return cls(
            repo,
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
            },
        )

    @property
    def endpoint(self) -> str:
        """The S3 endpoint the commands use."""
        return self.exported["AWS_ENDPOINT_URL_S3"]

    def guarded(self, what: str, steps: Callable[[], int]) -> int:
        """Run ``steps``; a failed command or request ends it with exit status 1 and one line."""
        try:
            return steps()
        except (subprocess.CalledProcessError, urllib.error.URLError) as exc:
            print(f"{what} failed: {exc}", file=sys.stderr)
            return 1

    def __enter__(self) -> Walkthrough:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for process in self._started:
            self.stop(process)

    def step(self, title: str) -> None:
        """A numbered heading."""
        print(f"\n== {title}", flush=True)

    def echo_exports(self) -> None:
        """The ``export`` line that makes every later command repeatable in a shell."""
        _echo_export(self.exported)

    def export(self, **values: str) -> None:
        """Set (and echo) more variables for the commands that follow."""
        self.exported.update(values)
        self.env.update(values)
        _echo_export(values)

    def run(self, *args: str) -> None:
        """``onnxkit ARGS`` in the foreground.

        Raises:
            subprocess.CalledProcessError: It exited non-zero.
        """
        print(f"$ {self.shown} " + shlex.join(args), flush=True)
        subprocess.run([ONNXKIT, *args], cwd=self.repo, env=self.env, check=True)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """``onnxkit ARGS`` in the background (its output dropped), echoed with ``&``."""
        print(f"$ {self.shown} " + shlex.join(args) + " &", flush=True)
        process = subprocess.Popen(
            [ONNXKIT, *args],
            cwd=self.repo,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._started.append(process)
        return process

    @staticmethod
    def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """Wait until ``url`` answers 200.

        Raises:
            SystemExit: It never did, or the process exited first.
        """
        try:
            wait_http(url, timeout_s=timeout, process=process)
        except TimeoutError as exc:
            raise SystemExit(f"{url} never came up: {exc}") from None

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        """Terminate a background command (killed after 15 s)."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _echo_export(values: dict[str, str]) -> None:
    print("$ export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items()), flush=True)

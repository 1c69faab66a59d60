"""Loopback plumbing for the local tools, tests and benchmarks: free ports, waiting for a server."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

LOOPBACK = "127.0.0.1"


def free_port(preferred: int | None = None) -> int:
    """A free TCP port on 127.0.0.1: ``preferred`` when it is free, else one the OS picks."""
    if preferred is not None:
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, preferred))
            except OSError:
                pass
            else:
                return preferred
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str,
    *,
    timeout_s: float = 30.0,
    process: subprocess.Popen | None = None,
    headers: dict[str, str] | None = None,
    status: int = 200,
) -> None:
    """Poll ``url`` until it answers ``status``.

    Args:
        url: A loopback URL.
        timeout_s: How long to keep trying.
        process: The server's process: give up at once if it exits.
        headers: Request headers (an API key, say).
        status: The status that means "ready".

    Raises:
        TimeoutError: Not ready in time, or the process exited (the message says which).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server exited with {process.returncode} before {url} answered")
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
            with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
                if reply.status == status:
                    return
                last = f"status {reply.status}"
        except urllib.error.HTTPError as exc:
            if exc.code == status:
                return
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s:.0f} s ({last})")

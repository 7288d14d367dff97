"""Stopping a child process the tests or benchmarks started: politely first, then for certain."""

from __future__ import annotations

import subprocess

STOP_TIMEOUT_S = 10.0


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate ``process`` and wait for it; kill it if it has not gone within ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)

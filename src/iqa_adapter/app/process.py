"""The web app in a background process: ``iqa-adapter app ...`` started from Python (a notebook, a test, a benchmark).

Standard library only, so it can be imported without the app's extras; the process itself needs them.

    from iqa_adapter.app.process import AppProcess

    with AppProcess(["--adapter", "toy:main"]) as app:
        print("open", app.url)
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppProcess:
    """``iqa-adapter app ARGUMENTS --port PORT`` in a subprocess, its output appended to ``log``.

    ``start()`` returns once the app answers ``GET /`` (``start_seconds`` says how long that took) and raises,
    with the log's end, if it exits or does not answer in time; ``kill()`` sends SIGKILL (a crash: no shutdown
    handler runs); ``stop()`` terminates it, killing it after 10 s. ``start()`` again, once it has stopped or been
    killed, restarts it on the same port; while it runs, ``start()`` raises instead of starting a second one.
    """

    def __init__(
        self,
        arguments: list[str],
        port: int | None = None,
        cwd: str | os.PathLike | None = None,
        log: str | os.PathLike | None = None,
    ) -> None:
        self.arguments = [str(argument) for argument in arguments]
        self.port = port or free_port()
        self.cwd = Path(cwd) if cwd is not None else None
        folder = self.cwd if self.cwd is not None else Path(tempfile.gettempdir())
        self.log = Path(log) if log is not None else folder / f"iqa_adapter_app_{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    def start(self, timeout: float = 120) -> AppProcess:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the app is already running at {self.url} (pid {self.process.pid}); stop() it first")
        started = time.monotonic()
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iqa_adapter", "app", *self.arguments, "--port", str(self.port)],
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with {self.process.returncode}:\n{self._log_end()}")
            try:
                urllib.request.urlopen(self.url + "/", timeout=2).read()
                self.start_seconds = time.monotonic() - started
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout} s:\n{self._log_end()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _log_end(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else "(no log)"

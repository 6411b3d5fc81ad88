"""Node settings: environment variables with the `FAAS_` prefix, also read from `.env`.

Secret settings (`FAAS_API_KEYS`, `FAAS_KAFKA_SASL_PASSWORD`) are `SecretStr`: their repr and str are
`**********`, so printing or logging the settings shows no value. When neither the environment nor `.env`
gives one, it is read from the file of the same name (`FAAS_API_KEYS`) in `FAAS_SECRETS_DIR`, with the
same rules as function secrets (control.secrets). Only these settings are read from there: a stray file
in a mounted folder must not change, say, the HTTP port.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from framework.kafka import security
from framework.kafka.address import bootstrap_servers, topic_problem


def _default_log_format() -> Literal["text", "json"]:
    return "text" if sys.stderr.isatty() else "json"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""`FAAS_LOG_LEVEL` values (any case)."""
TOPICS = (
    "events_topic",
    "replies_topic",
    "deadletter_topic",
    "scheduler_topic",
    "deployments_topic",
    "invocations_topic",
)
"""The settings naming a topic of the platform's: each its own (replies read as events would loop)."""


Switch = Literal["auto", "on", "off"]
"""A setting the node decides (`auto`) unless it is turned `on` or `off`."""

ENV_FILE = ".env"
"""The file settings (and the CLI's option twins) are also read from, relative to the working directory."""


class Settings(BaseSettings):
    """Every setting of the node. Each CLI option has one of these as its environment twin."""

    model_config = SettingsConfigDict(env_prefix="FAAS_", env_file=ENV_FILE, extra="ignore")

    manifest: Path = Path("functions.yaml")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    http_allowed_hosts: str = ""
    """Comma-separated domain names HTTP requests may be sent to (the `Host` header; a port is ignored)
    besides `localhost`, and whose pages may call the node; `*`: any. Empty: only `localhost` names when
    `http_host` is a loopback address, any name otherwise (`sources/http/browsers.py`: a web page must not
    reach a developer's node by a name of its own). Addresses and one-label names always pass."""
    kafka_bootstrap_servers: str = ""
    """Comma-separated `host:port` list; empty starts the embedded broker (DESIGN.md section 8)."""
    kafka_group_id: str = "faas"
    kafka_fetch_wait_ms: int = Field(20, ge=1, le=10_000)
    """Milliseconds the broker may hold the events consumer's fetch when it has no records. Short for the
    embedded broker, which holds a fetch this long even when records are there (each event waits up to it);
    Apache Kafka answers as soon as records arrive, so 500 there costs no latency and saves the CPU of
    idle polling."""
    kafka_request_timeout_ms: int = Field(15_000, ge=5_000, le=300_000)
    """Milliseconds a Kafka request may go unanswered before its client gives the connection up and opens a
    new one (aiokafka's default: 40,000); clients add their fetch wait and the size of their largest
    request (`kafka/options.py` `request_timeout_ms`). A broker that keeps a connection open and stops
    answering on it holds every later request on it until then. Keep it above a JoinGroup's longest wait:
    the session timeout (`kafka_session_timeout_ms`) plus the broker's initial rebalance delay (3 s by
    default); lower values are for a group of one node (tests), where the join waits only for that delay."""
    kafka_session_timeout_ms: int = Field(10_000, ge=6_000, le=300_000)
    """Milliseconds the group waits without a heartbeat from a node before it hands that node's partitions
    to the others (a SIGKILLed node's, and on the embedded broker a stopped one's, which sends no LeaveGroup
    it acts on); heartbeats go every third of it. At least 6,000, Apache Kafka's default
    `group.min.session.timeout.ms`; a node whose loop stalls this long loses its partitions for a while."""
    events_topic: str = "faas.events"
    replies_topic: str = "faas.replies"
    deadletter_topic: str = "faas.deadletter"
    scheduler_topic: str = "faas.scheduler"
    topic_partitions: int = Field(6, ge=1)
    """Partitions of topics the node creates when they are missing."""
    queue_timeout: float = Field(30.0, gt=0, allow_inf_nan=False)
    """Seconds a request may wait for a free instance before it is answered `Overloaded`."""
    _from_files: set[str] = PrivateAttr(default_factory=set)
    """The secret settings read from their files in the secrets folder (`_secret_files`)."""
    api_keys: SecretStr = SecretStr("")
    """Comma-separated bearer keys; when set, `/functions*` and `/events*` require one. Secret. A value that
    is set but holds no key (`,`) is refused rather than read as "no auth"."""
    max_payload_bytes: int = Field(1_048_576, ge=1)
    http_body_timeout: float = Field(10.0, gt=0, allow_inf_nan=False)
    """Seconds an HTTP request body may go without a byte arriving before it is answered 400 (a client
    that sends less than its Content-Length would otherwise hold the request for ever). Also bounds a
    request's head: one not whole this long after its connection opened (or its previous answer) is
    answered 400, and a connection that sent nothing by then is closed."""
    max_inflight_events: int = Field(1000, ge=1)
    embedded_broker_port: int = Field(9092, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(default_factory=_default_log_format)
    shutdown_grace: float = Field(30.0, ge=0, allow_inf_nan=False)
    """Seconds a stopping node waits for in-flight work before it cancels what is left."""
    watch: bool = True
    """Deploy every valid edit of the working copy (DESIGN.md section 12); off: edits show as `modified`."""
    deployments_topic: str = "faas.deployments"
    invocations_topic: str = "faas.invocations"
    recent_invocations: int = Field(1000, ge=0)
    """Invocation records each node keeps in memory for `GET /invocations`."""
    log_entries: int = Field(10, ge=0)
    """Log entries kept per invocation record."""
    log_chars: int = Field(5000, ge=0)
    """Characters of log message text kept per invocation record."""
    records: bool = True
    """Invocation records (DESIGN.md section 13); off: none kept, produced or aggregated (for comparisons)."""
    records_buffer: int = Field(10_000, ge=0)
    """Invocation records waiting to be produced, at most; beyond that the oldest are dropped and counted."""
    node_name: str = ""
    """This node's name in invocation records; empty: `<hostname>:<http port>`."""
    secrets_dir: Path = Path("secrets")
    """Folder of secret files (relative to the manifest's folder)."""
    cache_dir: Path = Path(".faas")
    """Folder of unpacked revision code (relative to the manifest's folder)."""
    cache_idle: float = Field(3600.0, ge=1, allow_inf_nan=False)
    """Seconds the code of a forgotten revision (no longer on the deployment log) stays in FAAS_CACHE_DIR
    after its last use before the node removes it."""
    max_code_bytes: int = Field(1_048_576, ge=1)
    """Largest zipped handler package a revision may carry."""

    # Production Kafka options (Apache Kafka); the embedded broker needs none of them.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    """One of `security.MECHANISMS`; empty: PLAIN (with a SASL protocol)."""
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_idempotence: Switch = "auto"
    """`auto`: idempotent producer with acks=all on Apache Kafka, off on the embedded broker (no support)."""
    kafka_leave_group: Switch = "auto"
    """Whether a stopping node's group consumers send LeaveGroup. `auto`: they do, except on the embedded
    broker, where a leave can leave the group unjoinable (Tansu 0.6.0, `kafka/group.py`); `off`: never (a
    Tansu broker not started by faas); `on`: always. Without a leave, partitions move after the session
    timeout."""

    @field_validator("manifest", mode="before")
    @classmethod
    def _manifest(cls, value: object) -> object:
        if isinstance(value, str | Path) and Path(str(value).strip()) == Path("."):  # Path("") is "." too
            raise ValueError("an empty path: name the manifest file (default functions.yaml)")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        return bootstrap_servers(value)

    @field_validator(*TOPICS)
    @classmethod
    def _topic(cls, value: str) -> str:
        problem = topic_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} is no topic: {problem}")
        return value

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _mechanism(cls, value: str) -> str:
        return security.mechanism(value)

    @field_validator("kafka_group_id")
    @classmethod
    def _group(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a consumer group id must not be empty")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()  # in `.env` too, where no CLI option checks it first
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is no log level: one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("http_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip():  # uvicorn would bind every interface: say 0.0.0.0 (or ::) to mean that
            raise ValueError("an empty host: give an address, 0.0.0.0 for every interface")
        return value.strip()

    @model_validator(mode="after")
    def _secret_files(self) -> Settings:
        for name in SECRET_SETTINGS:
            if not getattr(self, name).get_secret_value():
                value = _secret_file(self.secrets_path, f"FAAS_{name.upper()}")
                if value is not None:
                    setattr(self, name, SecretStr(value))
                    self._from_files.add(name)
        _check_keys(self.api_keys.get_secret_value(), self.keys)
        _check_distinct_topics({name: getattr(self, name) for name in TOPICS})
        protocol = self.kafka_security_protocol
        password = self.kafka_sasl_password.get_secret_value()
        security.check(protocol, self.kafka_sasl_mechanism, self.kafka_sasl_username, password)
        if protocol.endswith("SSL"):  # built once here to say what is wrong; each client builds its own
            security.context(self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        return self

    @property
    def not_for_replies(self) -> frozenset[str]:
        """Topics an event's `replyto` may not name: the platform's own, but for the replies topic. A reply
        there would be read as an event, a dead letter, a tick, an invocation record, or a deployment
        record under a key the sender chose (on a compacted log, it would replace that key's record)."""
        return frozenset(getattr(self, name) for name in TOPICS) - {self.replies_topic}

    @property
    def secrets_path(self) -> Path:
        """`secrets_dir` as an absolute path (relative to the manifest's folder)."""
        from framework.control.secrets import folder

        return folder(self.manifest, self.secrets_dir)

    @property
    def keys(self) -> list[str]:
        return _split_keys(self.api_keys.get_secret_value())

    @property
    def keys_follow_file(self) -> bool:
        """Whether the API keys were read from the file `FAAS_API_KEYS` in the secrets folder (neither the
        environment nor `.env` gave them): the node then follows that file's rotations."""
        return "api_keys" in self._from_files

    def keys_in_file(self) -> list[str]:
        """The keys the file `FAAS_API_KEYS` in the secrets folder holds now; ValueError saying why there are
        none (the file gone, unreadable, or holding no key)."""
        value = _secret_file(self.secrets_path, "FAAS_API_KEYS")
        if value is None:
            raise ValueError(f"FAAS_API_KEYS is no longer in the secrets folder {self.secrets_path}")
        keys = _split_keys(value)
        if not keys:
            raise ValueError(f"FAAS_API_KEYS {_NO_KEY}")
        return keys


_NO_KEY = "holds no key (keys are separated by commas or line breaks)"
"""Why a FAAS_API_KEYS value gives no key, at start (`_check_keys`) and in a rotated file (`keys_in_file`)."""


def _split_keys(raw: str) -> list[str]:
    """The keys of a FAAS_API_KEYS value: separated by commas or line breaks (a file of one key per line:
    no header can carry a line break, so no key holds one)."""
    return [k.strip() for k in _KEY_SEPARATORS.split(raw) if k.strip()]


_KEY_SEPARATORS = re.compile(r"[,\r\n]")


def _check_distinct_topics(topics: dict[str, str]) -> None:
    """ValueError naming the first two settings (of `TOPICS`, by name) that name one topic."""
    seen: dict[str, str] = {}
    for name, topic in topics.items():
        other = seen.setdefault(topic, name)
        if other != name:
            raise ValueError(
                f"FAAS_{name.upper()} and FAAS_{other.upper()} are both {topic!r}: each needs a topic of its "
                "own (what one is written for, the other would read as its own: replies as events, say)"
            )


def _check_keys(raw: str, keys: list[str]) -> None:
    """ValueError when FAAS_API_KEYS is set but would turn auth off without a word."""
    if raw.strip() and not keys:
        raise ValueError(f"FAAS_API_KEYS is set but {_NO_KEY}")


SECRET_SETTINGS = ("api_keys", "kafka_sasl_password")
"""Settings never printed or logged, also read from files in `FAAS_SECRETS_DIR`."""
SECRET_VARIABLES = frozenset(f"FAAS_{name.upper()}" for name in SECRET_SETTINGS)
"""Their environment variables, which are also the names of their files in `FAAS_SECRETS_DIR`."""


def _secret_file(folder: Path, name: str) -> str | None:
    """The value of the secret file `name` in `folder`, None when there is none; ValueError if unusable."""
    from framework.control.secrets import SecretError, SecretStore

    try:
        if not (folder / name).exists() and not (folder / name).is_symlink():
            return None
    except OSError as exc:  # the folder itself cannot be searched (its permissions)
        raise ValueError(f"cannot look for {name} in the secrets folder {folder}: {exc.strerror}") from None
    try:
        return SecretStore(folder).read(name)
    except SecretError as exc:
        raise ValueError(str(exc)) from None

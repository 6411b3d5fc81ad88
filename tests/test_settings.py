"""framework.settings: FAAS_* environment variables, the `.env` file, and the CLI's view of them."""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.kafka.address import bootstrap_servers
from framework.settings import Settings
from tests.kafka.test_address import BAD_BOOTSTRAP


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FAAS_* from the caller's environment, and a working directory without a `.env`."""
    import os

    for name in [n for n in os.environ if n.startswith("FAAS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = Settings()
    assert (s.manifest, s.http_host, s.http_port, s.kafka_bootstrap_servers) == (
        Path("functions.yaml"),
        "127.0.0.1",
        8080,
        "",
    )
    assert (s.events_topic, s.replies_topic, s.deadletter_topic, s.scheduler_topic) == (
        "faas.events",
        "faas.replies",
        "faas.deadletter",
        "faas.scheduler",
    )
    assert (s.queue_timeout, s.max_payload_bytes, s.embedded_broker_port, s.shutdown_grace) == (
        30,
        1048576,
        9092,
        30,
    )
    assert s.keys == []
    assert s.kafka_fetch_wait_ms == 20  # the embedded broker's wait (README: Performance)


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """1. A `.env` sets the port, the manifest and the log level. 2. The environment sets the port too.
    Result: `.env` values apply, and the environment wins over `.env`.
    """
    (tmp_path / ".env").write_text("FAAS_HTTP_PORT=9000\nFAAS_MANIFEST=other.yaml\nFAAS_LOG_LEVEL=debug\n")
    s = Settings()
    assert (s.http_port, s.manifest, s.log_level) == (9000, Path("other.yaml"), "DEBUG")
    monkeypatch.setenv("FAAS_HTTP_PORT", "9100")
    monkeypatch.setenv("FAAS_API_KEYS", " k1, ,k2 ")
    s = Settings()
    assert (s.http_port, s.keys) == (9100, ["k1", "k2"])


def test_cli_manifest_option_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "mine.yaml").write_text("functions: []\n")
    monkeypatch.setenv("FAAS_MANIFEST", str(tmp_path / "missing.yaml"))
    r = CliRunner().invoke(main, ["--manifest", str(tmp_path / "mine.yaml"), "validate"])
    assert r.exit_code == 0 and r.output == "ok: 0 functions\n", r.output
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 1 and "missing.yaml:1:1: cannot read the manifest" in r.output


def test_an_empty_manifest_path_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty FAAS_MANIFEST (or `--manifest ''`) names no file: exit 2 saying so, not a manifest error about
    the working directory (`Path("")` is `.`)."""
    monkeypatch.setenv("FAAS_MANIFEST", "")
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 2 and "FAAS_MANIFEST: an empty path" in r.output, r.output
    monkeypatch.delenv("FAAS_MANIFEST")
    r = CliRunner().invoke(main, ["--manifest", "", "validate"])
    assert r.exit_code == 2 and "FAAS_MANIFEST: an empty path" in r.output, r.output


def test_a_port_out_of_range_is_a_usage_error_naming_the_option() -> None:
    """`faas run --port 70000` and `faas broker --port -1`: exit 2 naming --port (the broker's went to the
    broker binary, which failed with exit 1)."""
    for args in (["run", "--port", "70000"], ["broker", "--port", "-1"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "Invalid value for --port: " in r.output and "is not a port" in r.output


def test_deploy_all_has_its_twin_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`faas deploy --all`'s environment twin is FAAS_DEPLOY_ALL (click would name it FAAS_DEPLOY_ALL_)."""
    (tmp_path / "functions.yaml").write_text("functions: []\n")
    monkeypatch.setenv("FAAS_DEPLOY_ALL", "1")
    r = CliRunner().invoke(main, ["deploy"])
    assert "Missing argument" not in r.output and r.exit_code in (0, 1), r.output
    shown = " ".join(CliRunner().invoke(main, ["deploy", "--help"]).output.split())
    assert "[env var: FAAS_DEPLOY_ALL]" in shown, shown


def test_invalid_setting_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_HTTP_PORT", "eighty")
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 2 and "FAAS_HTTP_PORT" in r.output


@pytest.mark.parametrize(
    ("variable", "bad", "good"),
    [
        ("FAAS_KAFKA_FETCH_WAIT_MS", ("0", "10001", "soon"), 500),
        # Under Apache Kafka's minimum (6,000 ms) the group would refuse the node's join at every start.
        ("FAAS_KAFKA_SESSION_TIMEOUT_MS", ("5999", "300001", "10s"), 45_000),
    ],
)
def test_kafka_millisecond_settings_out_of_range_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, variable: str, bad: tuple[str, ...], good: int
) -> None:
    for value in bad:
        monkeypatch.setenv(variable, value)
        r = CliRunner().invoke(main, ["validate"])
        assert r.exit_code == 2 and variable in r.output, (value, r.output)
    monkeypatch.setenv(variable, str(good))
    assert getattr(Settings(), variable.removeprefix("FAAS_").lower()) == good


def test_leave_group_takes_auto_on_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().kafka_leave_group == "auto"
    monkeypatch.setenv("FAAS_KAFKA_LEAVE_GROUP", "off")
    assert Settings().kafka_leave_group == "off"
    monkeypatch.setenv("FAAS_KAFKA_LEAVE_GROUP", "never")
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 2 and "FAAS_KAFKA_LEAVE_GROUP" in r.output and "'auto', 'on' or 'off'" in r.output


@pytest.mark.parametrize(
    ("keys", "problem"),
    [(",", "is set but holds no key"), (" , ,", "is set but holds no key")],
)
def test_api_keys_of_separators_only_are_refused(
    monkeypatch: pytest.MonkeyPatch, keys: str, problem: str
) -> None:
    """FAAS_API_KEYS of separators only: read as "no key" it would serve every route without auth and say
    nothing, so `faas run` (any command) exits 2 naming the setting; an empty value is auth off."""
    monkeypatch.setenv("FAAS_API_KEYS", keys)
    r = CliRunner().invoke(main, ["run"])
    assert r.exit_code == 2 and "FAAS_API_KEYS" in r.output and problem in r.output, r.output
    monkeypatch.setenv("FAAS_API_KEYS", "")
    assert Settings().keys == []  # empty: auth off, as documented


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FAAS_REPLIES_TOPIC": "faas.events"},
            "FAAS_REPLIES_TOPIC and FAAS_EVENTS_TOPIC are both 'faas.events'",
        ),
        ({"FAAS_INVOCATIONS_TOPIC": "x", "FAAS_DEPLOYMENTS_TOPIC": "x"}, "are both 'x'"),
        ({"FAAS_EVENTS_TOPIC": ""}, "FAAS_EVENTS_TOPIC: '' is no topic"),
        ({"FAAS_REPLIES_TOPIC": "bad topic"}, "FAAS_REPLIES_TOPIC: 'bad topic' is no topic"),
        ({"FAAS_DEADLETTER_TOPIC": ".."}, "FAAS_DEADLETTER_TOPIC: '..' is no topic"),
        ({"FAAS_SCHEDULER_TOPIC": "t" * 250}, "FAAS_SCHEDULER_TOPIC"),
        ({"FAAS_KAFKA_GROUP_ID": " "}, "FAAS_KAFKA_GROUP_ID: a consumer group id must not be empty"),
    ],
)
def test_topics_and_group_a_node_cannot_work_with_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    """A topic name Kafka refuses, an empty group, or two settings naming one topic (replies produced to
    the events topic would be consumed as events, for ever): exit 2 naming the settings, before anything
    runs."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = CliRunner().invoke(main, ["run"])
    assert r.exit_code == 2 and problem in r.output, r.output


def test_replies_may_go_to_no_topic_of_the_platforms_but_the_replies_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAAS_DEPLOYMENTS_TOPIC", "ops.deploys")
    monkeypatch.setenv("FAAS_REPLIES_TOPIC", "ops.replies")
    assert Settings().not_for_replies == {
        "faas.events", "faas.deadletter", "faas.scheduler", "ops.deploys", "faas.invocations"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("FAAS_SHUTDOWN_GRACE=inf", "FAAS_SHUTDOWN_GRACE"),
        ("FAAS_QUEUE_TIMEOUT=inf", "FAAS_QUEUE_TIMEOUT"),
        ("FAAS_LOG_LEVEL=LOUD", "FAAS_LOG_LEVEL: 'LOUD' is no log level"),
        ("FAAS_HTTP_HOST=", "an empty host"),
    ],
)
def test_bad_values_in_dotenv_are_usage_errors(tmp_path: Path, line: str, problem: str) -> None:
    """Values a node cannot run with, in `.env` (where no CLI option checks them first): `faas run` exits 2
    naming the setting, not a traceback (inf crashed the start; `LOUD` crashed logging; an empty host bound
    every interface)."""
    (tmp_path / ".env").write_text(line + "\n")
    with contextlib.chdir(tmp_path):
        r = CliRunner().invoke(main, ["run"])
    assert r.exit_code == 2 and problem in r.output, (r.output, r.exception)


def test_an_empty_host_option_is_a_usage_error() -> None:
    r = CliRunner().invoke(main, ["run", "--host", " "])
    assert r.exit_code == 2 and "--host" in r.output and "an empty host" in r.output, r.output


def test_secret_settings_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_API_KEYS", "key-one,key-two")
    monkeypatch.setenv("FAAS_KAFKA_SASL_PASSWORD", "sasl-pass-9")
    s = Settings()
    assert s.keys == ["key-one", "key-two"]
    assert s.kafka_sasl_password.get_secret_value() == "sasl-pass-9"
    shown = f"{s!r} {s} {s.model_dump()} {s.model_dump_json()}"
    assert "key-one" not in shown and "sasl-pass-9" not in shown and "**********" in shown


def test_secret_settings_from_files_in_the_secrets_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1. `secrets/FAAS_API_KEYS` and `secrets/FAAS_KAFKA_SASL_PASSWORD` beside the manifest, and a stray
    `secrets/FAAS_HTTP_PORT`. 2. Then FAAS_API_KEYS in the environment too.
    Result: the files give the two secret settings (trailing newline removed), never the port; the
    environment wins over the file."""
    (tmp_path / "proj" / "secrets").mkdir(parents=True)
    (tmp_path / "proj" / "secrets" / "FAAS_API_KEYS").write_text("file-key-1,file-key-2\n")
    (tmp_path / "proj" / "secrets" / "FAAS_KAFKA_SASL_PASSWORD").write_text("file-pass\n")
    (tmp_path / "proj" / "secrets" / "FAAS_HTTP_PORT").write_text("9999\n")
    s = Settings(manifest=tmp_path / "proj" / "functions.yaml")
    assert s.keys == ["file-key-1", "file-key-2"]
    assert s.kafka_sasl_password.get_secret_value() == "file-pass"
    assert s.http_port == 8080
    monkeypatch.setenv("FAAS_API_KEYS", "env-key")
    assert Settings(manifest=tmp_path / "proj" / "functions.yaml").keys == ["env-key"]


def test_bad_secret_setting_file_is_a_clear_error_without_its_value(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "FAAS_API_KEYS").write_text("k1\n")
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 2, r.output
    assert "secret 'FAAS_API_KEYS'" in r.output and "under 4 characters" in r.output
    assert "k1" not in r.output.replace("FAAS_API_KEYS", "")
    (tmp_path / "secrets" / "FAAS_API_KEYS").unlink()
    (tmp_path / "secrets" / "FAAS_API_KEYS").mkdir()
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 2 and "is a folder, not a file" in r.output, r.output


@pytest.mark.parametrize("given", ["k1:9092, k2.example.com:19092", "[::1]:9092", "   "])
def test_the_setting_keeps_the_bootstrap_list_as_the_rule_reads_it(given: str) -> None:
    assert Settings(kafka_bootstrap_servers=given).kafka_bootstrap_servers == bootstrap_servers(given)


@pytest.mark.parametrize(("value", "problem"), BAD_BOOTSTRAP)
def test_malformed_bootstrap_servers_are_a_usage_error_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """1. FAAS_KAFKA_BOOTSTRAP_SERVERS malformed. 2. `faas run` (its node a fake that would serve), `faas
    history x`, `faas emit x`. Result: each exits 2 with one `invalid setting: FAAS_KAFKA_BOOTSTRAP_SERVERS`
    line naming the entry and what is wrong; the node never starts and no Kafka client is made."""
    served: list[Settings] = []

    def serve(settings: Settings, kafka: bool = True) -> int:
        served.append(settings)
        return 0

    monkeypatch.setitem(sys.modules, "framework.node", types.SimpleNamespace(serve=serve))
    monkeypatch.setenv("FAAS_KAFKA_BOOTSTRAP_SERVERS", value)
    for args in (["run"], ["history", "x"], ["emit", "x", "--timeout", "1"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (args, r.output, r.exception)
        error = r.stderr.splitlines()[-1]
        assert error.startswith("Error: invalid setting: FAAS_KAFKA_BOOTSTRAP_SERVERS: "), error
        assert problem in error and "Value error" not in error, error
    assert served == []


def test_a_secrets_folder_that_cannot_be_searched_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secrets folder its user may not search (mode 000; as root the test stands in for the kernel's
    EACCES) is a settings error naming it: every `faas` command printed a traceback."""
    (tmp_path / "secrets").mkdir()
    real = Path.exists

    def denied(path: Path) -> bool:
        if path.parent == tmp_path / "secrets":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(
        ValueError, match=r"cannot look for FAAS_API_KEYS in the secrets folder .*Permission denied"
    ):
        Settings(secrets_dir=tmp_path / "secrets")

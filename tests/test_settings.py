"""framework.settings: FAAS_* environment variables, the `.env` file, and the CLI's view of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.settings import Settings


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


def test_invalid_setting_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_HTTP_PORT", "eighty")
    r = CliRunner().invoke(main, ["validate"])
    assert r.exit_code == 2 and "FAAS_HTTP_PORT" in r.output

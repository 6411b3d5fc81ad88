"""The Kafka clients' TLS and SASL settings (framework/kafka/security.py), checked as the settings are read:
each problem one usage line naming its setting, before any client starts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.kafka.options import security_options
from framework.settings import Settings

TLS = Path(__file__).parent.parent / "data" / "tls"
"""A self-signed client certificate (`client.pem`), its key (`client.key`) and the key encrypted
(`encrypted.key`, passphrase `secret`), made with `openssl req -x509 -newkey rsa:2048 -nodes` and
`openssl pkey -aes256`."""


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FAAS_KAFKA_SASL_MECHANISM": "bogus"},
            "FAAS_KAFKA_SASL_MECHANISM 'BOGUS' is no SASL mechanism",
        ),
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FAAS_KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI",
        ),
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
            "SASL mechanism PLAIN needs both FAAS_KAFKA_SASL_USERNAME and FAAS_KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "FAAS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "FAAS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "FAAS_KAFKA_SASL_USERNAME": "u",
            },
            "SASL mechanism SCRAM-SHA-512 needs both",
        ),
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SSL", "FAAS_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "FAAS_KAFKA_SSL_CAFILE '/nonexistent/ca.pem': No such file or directory",
        ),
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SSL", "FAAS_KAFKA_SSL_CAFILE": str(TLS / "client.key")},
            "holds no CA certificate",
        ),
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SSL", "FAAS_KAFKA_SSL_CERTFILE": str(TLS / "client.key")},
            "FAAS_KAFKA_SSL_CERTFILE: not a certificate and its private key",
        ),
        (
            {"FAAS_KAFKA_SECURITY_PROTOCOL": "SSL", "FAAS_KAFKA_SSL_KEYFILE": str(TLS / "client.key")},
            "FAAS_KAFKA_SSL_KEYFILE is set without FAAS_KAFKA_SSL_CERTFILE",
        ),
        (
            {
                "FAAS_KAFKA_SECURITY_PROTOCOL": "SSL",
                "FAAS_KAFKA_SSL_CERTFILE": str(TLS / "client.pem"),
                "FAAS_KAFKA_SSL_KEYFILE": str(TLS / "encrypted.key"),
            },
            "encrypted.key': the key is encrypted",
        ),
    ],
)
def test_a_security_setting_no_client_can_use_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], said: str
) -> None:
    """Each broken TLS or SASL setup, given to a verb that reads a topic. Result: exit 2, one line naming the
    setting, no traceback (aiokafka raised at the client's start, and a node retried for ever)."""
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = CliRunner().invoke(main, ["history", "greet"])
    assert r.exit_code == 2 and said in r.output, r.output
    assert "Traceback" not in r.output and "invalid setting" in r.output


def test_usable_security_settings_make_the_clients_options(tmp_path: Path) -> None:
    """SCRAM in any case with its user and password; TLS with a client certificate and its key (and with
    none: the system's CAs). Result: the options every client takes, the mechanism in upper case, an SSL
    context that checks the broker's certificate and name."""
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="scram-sha-256",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
        kafka_ssl_certfile=str(TLS / "client.pem"),
        kafka_ssl_keyfile=str(TLS / "client.key"),
    )
    options = security_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-256",
        "u",
        "p",
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    plain = security_options(Settings(kafka_security_protocol="SSL"))
    assert isinstance(plain["ssl_context"], ssl.SSLContext) and "sasl_mechanism" not in plain
    sasl = security_options(
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p")
    )
    assert sasl["sasl_mechanism"] == "PLAIN" and "ssl_context" not in sasl
    assert security_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    # A mechanism is looked at only with a SASL protocol: an earlier setup's value does not stop a start.
    assert Settings(kafka_sasl_mechanism="OAUTHBEARER").kafka_security_protocol == "PLAINTEXT"

"""TLS and SASL options of the platform's Kafka clients, checked when the settings are read.

aiokafka checks them only as a client starts, and says what is wrong as a traceback (or, for a SASL setup it
cannot use, a node retried the broker for ever as if it were away): a mechanism it does not know, PLAIN or
SCRAM without a user name and password, a CA, certificate or key file that is missing or holds no such
thing, an encrypted key (OpenSSL would ask for its passphrase on the terminal). The settings call `check`
and `context`, so `faas run` and every verb say it in one line naming the setting before anything starts;
`context` also builds the SSL context each client is given (`options.security_options`).
"""

from __future__ import annotations

import importlib.util
import ssl

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")
"""SASL mechanisms a client takes from settings alone (aiokafka's OAUTHBEARER needs a token provider
object, which no setting can give)."""


def mechanism(value: str) -> str:
    """FAAS_KAFKA_SASL_MECHANISM in upper case (empty: PLAIN, aiokafka's default, with a SASL protocol)."""
    return value.strip().upper()


def check(protocol: str, sasl_mechanism: str, username: str, password: str) -> None:
    """ValueError naming the settings when a SASL protocol lacks what its mechanism needs."""
    if not protocol.startswith("SASL"):  # not used: what it says is not looked at (an earlier setup's)
        return
    name = sasl_mechanism or "PLAIN"
    if name not in MECHANISMS:
        raise ValueError(
            f"FAAS_KAFKA_SASL_MECHANISM {sasl_mechanism!r} is no SASL mechanism a client can use: one of "
            f"{', '.join(MECHANISMS)}"
        )
    if name == "GSSAPI":
        if importlib.util.find_spec("gssapi") is None:
            raise ValueError("FAAS_KAFKA_SASL_MECHANISM=GSSAPI needs the gssapi package (pip install gssapi)")
    elif not username or not password:
        raise ValueError(
            f"FAAS_KAFKA_SECURITY_PROTOCOL={protocol} with SASL mechanism {name} needs both "
            "FAAS_KAFKA_SASL_USERNAME and FAAS_KAFKA_SASL_PASSWORD"
        )


def _encrypted() -> str:
    raise ValueError("the key is encrypted: give an unencrypted key")


def context(cafile: str, certfile: str, keyfile: str) -> ssl.SSLContext:
    """The clients' SSL context: the broker's certificate checked against `cafile` (empty: the system's CAs)
    and its host name, and the client certificate `certfile` with its key (`keyfile`, or in `certfile`)
    when given. ValueError naming the setting whose file cannot be used."""
    for setting, path in (("CAFILE", cafile), ("CERTFILE", certfile), ("KEYFILE", keyfile)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"FAAS_KAFKA_SSL_{setting} {path!r}: {exc.strerror or exc}") from None
    try:
        made = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile or None)
    except ssl.SSLError as exc:
        raise ValueError(f"FAAS_KAFKA_SSL_CAFILE {cafile!r} holds no CA certificate ({exc})") from None
    if keyfile and not certfile:
        raise ValueError(
            "FAAS_KAFKA_SSL_KEYFILE is set without FAAS_KAFKA_SSL_CERTFILE, the certificate it is for"
        )
    if certfile:
        try:
            made.load_cert_chain(certfile, keyfile or None, password=_encrypted)
        except ssl.SSLError as exc:
            names = "FAAS_KAFKA_SSL_CERTFILE" + (" and FAAS_KAFKA_SSL_KEYFILE" if keyfile else "")
            raise ValueError(f"{names}: not a certificate and its private key ({exc})") from None
        except ValueError as exc:  # `_encrypted`
            setting = "KEYFILE" if keyfile else "CERTFILE"
            raise ValueError(f"FAAS_KAFKA_SSL_{setting} {keyfile or certfile!r}: {exc}") from None
    return made

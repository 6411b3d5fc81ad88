"""The rules for what names a place on Kafka: a bootstrap list (`FAAS_KAFKA_BOOTSTRAP_SERVERS`, every
`--bootstrap`) and a topic name (the `FAAS_*_TOPIC` settings, an event's `ce_replyto`).

aiokafka takes any string and fails only once it connects (or, for a topic, once a request names it), with
an error a user cannot act on; these name what is wrong and why, up front. Plain Python (no client
imported), so the settings can use them.
"""

from __future__ import annotations

import ipaddress
import re

MAX_TOPIC = 249
"""Characters of the longest topic name Kafka accepts."""
TOPIC = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_TOPIC}}}")
"""A topic name Kafka accepts (besides `.` and `..`)."""
_NOT_TOPIC = re.compile(r"[^A-Za-z0-9._-]")


def topic_problem(name: str) -> str | None:
    """Why `name` is no Kafka topic name; None when it is one."""
    if not TOPIC.fullmatch(name) or name in (".", ".."):
        return f"a topic name is 1-{MAX_TOPIC} of the characters A-Z a-z 0-9 . _ - (and not '.' or '..')"
    return None


def topic_named(prefix: str, text: str, fallback: str) -> str:
    """`prefix` + `text` as a topic name: characters a topic name may not hold become `-`, and `text` is cut
    to fit MAX_TOPIC (`fallback` when nothing of it is left). ValueError when `prefix` leaves no room."""
    room = MAX_TOPIC - len(prefix)
    part = _NOT_TOPIC.sub("-", text)[:room] or fallback[:room]
    name = prefix + part
    problem = topic_problem(name) if room > 0 else f"{prefix!r} leaves no room under {MAX_TOPIC} characters"
    if problem is not None:
        raise ValueError(f"no topic name can be made from {prefix!r}: {problem}")
    return name


_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A host name or IPv4 address as a Kafka client resolves it (underscores occur in container names)."""
_PORT = re.compile(r"[0-9]+")
BOOTSTRAP_FORM = "host:port, comma-separated; IPv6 as [address]:port"


def bootstrap_servers(value: str) -> str:
    """A Kafka bootstrap list (`FAAS_KAFKA_BOOTSTRAP_SERVERS`, every `--bootstrap`) with each entry
    stripped; empty stays empty. ValueError naming the entry that a Kafka client could not connect to.

    The forms aiokafka accepts: `host`, `host:port`, `[IPv6]`, `[IPv6]:port` and a bare IPv6 address
    (no port: 9092). Checked here because the client only fails once it connects, with a traceback."""
    if not value.strip():
        return ""
    entries = [entry.strip() for entry in value.split(",")]
    for entry in entries:
        problem = _address_problem(entry)
        if problem is not None:
            shown = f"{entry!r}: " if entry else ""
            raise ValueError(f"{shown}{problem} (expected {BOOTSTRAP_FORM})")
    return ",".join(entries)


def _address_problem(entry: str) -> str | None:
    if not entry:
        return "an empty entry in the list"
    if "//" in entry:
        return "no scheme (such as PLAINTEXT://) belongs in a bootstrap address"
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket:
            return "no closing ']' after the IPv6 address"
        if not _is_ipv6(host):
            return f"{host!r} is not an IPv6 address"
        if not rest:
            return None
        if not rest.startswith(":"):
            return "only ':port' may follow the ']'"
        return _port_problem(rest[1:])
    if entry.count(":") > 1:
        # aiokafka reads an unbracketed address with several colons as IPv6 without a port.
        return None if _is_ipv6(entry) else "an IPv6 address with a port goes in brackets: [::1]:9092"
    host, colon, port = entry.partition(":")
    if not _HOST.fullmatch(host):
        return f"{host!r} is not a host name or address"
    return _port_problem(port) if colon else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port_problem(port: str) -> str | None:
    if not _PORT.fullmatch(port):
        return f"port {port!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} is not between 1 and 65535"
    return None

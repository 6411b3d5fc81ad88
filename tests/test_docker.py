"""docker/: what can be checked without a Docker engine (none runs here)."""

from __future__ import annotations

import re
from pathlib import Path

from ruamel.yaml import YAML

from framework.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def _settings_names() -> set[str]:
    return {f"FAAS_{name.upper()}" for name in Settings.model_fields}


def test_compose_sets_only_real_settings() -> None:
    """1. Parse docker/compose.yaml. 2. Collect every FAAS_* variable of every service.
    Result: each is a field of Settings, and both nodes share one consumer group on Kafka."""
    compose = YAML(typ="safe").load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if "build" in s}
    assert len(nodes) == 2, nodes.keys()
    known = _settings_names()
    for name, service in nodes.items():
        env = service["environment"]
        faas = {k for k in env if k.startswith("FAAS_")}
        assert faas, name
        assert faas <= known, f"{name}: not settings: {sorted(faas - known)}"
        Settings(**{k.removeprefix("FAAS_").lower(): v for k, v in env.items() if k in faas})
        assert env["FAAS_KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services
    groups = {s["environment"]["FAAS_KAFKA_GROUP_ID"] for s in nodes.values()}
    assert len(groups) == 1
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_dockerfile_copies_files_that_exist() -> None:
    """1. Read every COPY of docker/Dockerfile (context: the project root). Result: each source exists,
    the image runs as a non-root user, has a HEALTHCHECK on /healthz and `faas run` as entry point."""
    text = (DOCKER / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(?!--)(.+)$", text, flags=re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), src
    assert re.search(r"^USER\s+(?!root)\w+", text, flags=re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["faas"]' in text and 'CMD ["run"]' in text
    env_names = set(re.findall(r"\b(FAAS_[A-Z_]+)=", text))
    assert env_names <= _settings_names(), env_names - _settings_names()


def test_nodes_run_under_an_init_and_the_context_leaves_out_local_state() -> None:
    """1. Parse docker/compose.yaml and .dockerignore.
    Result: every node service has `init: true` (signals reach `faas run`, orphans are reaped); the build
    context leaves out the venv, git, caches, local secrets and `.env`, but not what the Dockerfile copies."""
    compose = YAML(typ="safe").load((DOCKER / "compose.yaml").read_text())
    nodes = {name: s for name, s in compose["services"].items() if "build" in s}
    assert nodes and all(s.get("init") is True for s in nodes.values()), nodes
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "secrets"} <= ignored, ignored
    copied = re.findall(r"^COPY (\S+)", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)
    assert copied and not ignored & set(copied), (copied, ignored)

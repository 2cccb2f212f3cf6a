"""docker/ cannot be built here (no Docker engine): check it is consistent with the config instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dicom_node.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def _env_to_settings(env: dict[str, str]) -> Settings:
    import os

    saved = dict(os.environ)
    try:
        os.environ.update({k: str(v) for k, v in env.items() if k.startswith("X2X_")})
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_compose_has_the_services() -> None:
    services = _compose()["services"]
    assert {"node", "worker", "redis", "orthanc"} <= set(services)
    assert services["worker"]["command"] == ["worker"]
    assert services["node"]["command"] == ["serve"]


def test_compose_environment_is_valid_config_and_ports_match() -> None:
    services = _compose()["services"]
    node = _env_to_settings(services["node"]["environment"])
    worker = _env_to_settings(services["worker"]["environment"])
    published = {int(p.split(":")[1]) for p in services["node"]["ports"]}
    assert {node.node.port, node.api.port} <= published
    assert node.api.host == "0.0.0.0"  # inside a container the API must listen beyond loopback
    # node and workers must share broker, database, var dir and model location
    for attr in ("broker_url", "database_url", "var_dir"):
        assert getattr(node, attr) == getattr(worker, attr)
    assert node.model.path == worker.model.path
    assert node.queue.broker_url and node.queue.broker_url.startswith("redis://redis:")
    pacs = node.destinations[node.send.default_destination or ""]
    orthanc_env = services["orthanc"]["environment"]
    assert pacs.ae_title == orthanc_env["ORTHANC__DICOM_AET"]
    assert str(pacs.port) == orthanc_env["ORTHANC__DICOM_PORT"]


def test_compose_volumes_cover_var_dir_and_models() -> None:
    compose = _compose()
    node = compose["services"]["node"]
    settings = _env_to_settings(node["environment"])
    mounts = {v.split(":")[1] for v in node["volumes"]}
    assert str(settings.var_dir) in mounts
    assert settings.model.path is not None and str(settings.model.path).startswith(tuple(mounts))
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert {n for n in named if not n.startswith(".")} <= set(compose["volumes"])


def test_dockerfile_matches_compose_and_runs_as_non_root() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+runtime", text, re.M)
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "torch==2.13.0" in text  # the pin comes first, as in scripts/setup.sh
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    defaults = load_settings()
    assert {defaults.node.port, defaults.api.port} <= exposed
    volumes = re.search(r'^VOLUME \[(.+)\]', text, re.M)
    assert volumes and "/models" in volumes.group(1) and "/var/lib/x2x" in volumes.group(1)

"""The container setup as data: docker-compose.yml's services and bind mounts, the image's files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from monitoring.configs import load_yaml_mapping
from tests.tool_support import REPO_ROOT

COMPOSE_FILE: Final = REPO_ROOT / "docker-compose.yml"
DOCKERFILE: Final = REPO_ROOT / "Dockerfile"
DOCKERIGNORE: Final = REPO_ROOT / ".dockerignore"


@dataclass(frozen=True)
class BindMount:
    """A host path a compose service mounts."""

    service: str
    source: Path
    target: str
    read_only: bool


def load_compose() -> dict[str, Any]:
    """Parse docker-compose.yml."""
    return load_yaml_mapping(COMPOSE_FILE)


def compose_bind_mounts(compose: Mapping[str, Any] | None = None) -> list[BindMount]:
    """Every bind mount (short or long syntax) of every service; named volumes are skipped."""
    spec = load_compose() if compose is None else compose
    mounts: list[BindMount] = []
    for service, body in spec.get("services", {}).items():
        for volume in body.get("volumes", []):
            if isinstance(volume, str):
                parts = volume.split(":")
                source, target = parts[0], parts[1]
                read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            else:
                if volume.get("type") != "bind":
                    continue
                source, target = str(volume["source"]), str(volume["target"])
                read_only = bool(volume.get("read_only", False))
            if not source.startswith((".", "/", "~")):
                continue
            mounts.append(BindMount(service, (REPO_ROOT / source).resolve(), target, read_only))
    return mounts


def mount_target_of(source: Path, mounts: Sequence[BindMount]) -> str:
    """Where a host path is mounted in its container."""
    for mount in mounts:
        if mount.source == source.resolve():
            return mount.target
    raise LookupError(f"{source} is not bind-mounted by docker-compose.yml")

"""The Prometheus Operator's PrometheusRule, generated from ``monitoring/rules/*.yml``.

The rule files stay the one source of truth (promtool tests them, docker-compose
mounts them); ``deploy/kubernetes/base/prometheusrule.yaml`` is their groups, in
file order, wrapped in a PrometheusRule. Regenerate after editing a rule file::

    python -m monitoring.prometheusrule          # writes the manifest
    python -m monitoring.prometheusrule --check  # exit 1 when it is stale

tests/test_kubernetes.py fails when the committed manifest differs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from monitoring.configs import MONITORING_DIR, load_yaml_mapping, rule_files

MANIFEST: Final = MONITORING_DIR.parent / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
NAME: Final = "flowgpt-gateway"
HEADER: Final = (
    "# GENERATED from monitoring/rules/*.yml by `python -m monitoring.prometheusrule`: do not edit.\n"
    "# Your Prometheus must select it (its ruleSelector, e.g. a `release` label: see overlays/example).\n"
)


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so expressions read as they do in the rule files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def rule_groups(files: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """Every group of every rule file, in file order, as written."""
    groups: list[dict[str, Any]] = []
    for path in rule_files() if files is None else files:
        groups.extend(load_yaml_mapping(path).get("groups", []))
    return groups


def prometheus_rule(files: Sequence[Path] | None = None) -> dict[str, Any]:
    """The PrometheusRule object carrying the rule files' groups."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": NAME,
            "labels": {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "gateway"},
        },
        "spec": {"groups": rule_groups(files)},
    }


def render(files: Sequence[Path] | None = None) -> str:
    """The manifest's text: the header, then the object as YAML."""
    body = yaml.dump(prometheus_rule(files), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    """Write the manifest, or with ``--check`` report whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.prometheusrule", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest differs from the rule files")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not MANIFEST.is_file() or MANIFEST.read_text(encoding="utf-8") != text:
            print(f"{MANIFEST} is stale: run python -m monitoring.prometheusrule", file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(text, encoding="utf-8")
    print(f"wrote {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

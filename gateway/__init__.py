"""flowgpt-gateway: a resilient OpenAI-compatible gateway in front of FlowGpt."""

from __future__ import annotations

__version__ = "0.1.0"

"""How a healthy simulator behaves: ``SimOptions``, fixed for a simulator's life."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN


class SimOptions(BaseModel):
    """How a healthy simulator behaves (answer shape, pacing, request checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    chunks: int = Field(default=8, ge=1)
    chunk_delay: float = Field(default=0.0, ge=0)
    token: str = ANONYMOUS_TOKEN
    check_signature: bool = True
    max_clock_skew: float = Field(default=300.0, ge=0)
    seed: int | None = None
    meta_events: bool = True
    # Distinct routes served, the default one included (see routes.py); capped so
    # that even a generous setting keeps the per-route state small.
    max_routes: int = Field(default=64, ge=1, le=1024)

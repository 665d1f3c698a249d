"""``GET /v1/models`` and ``GET /v1/models/{id}``: FlowGpt's models and their aliases."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import ModelNotFoundError
from gateway.flowgpt.protocol import MODEL_ALIASES, MODELS

OWNER = "flowgpt"


def _model(model_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model_id, "object": "model", "created": 0, "owned_by": OWNER}
    if model_id in MODEL_ALIASES:
        entry["alias_of"] = MODEL_ALIASES[model_id]
    return entry


_LISTING = {"object": "list", "data": [_model(m) for m in (*MODELS, *MODEL_ALIASES)]}


async def list_models(request: web.Request) -> web.Response:
    """Every model id the gateway accepts."""
    return web.json_response(_LISTING)


async def get_model(request: web.Request) -> web.Response:
    """One model, or 404 in OpenAI's shape."""
    model_id = request.match_info["id"]
    if model_id not in MODELS and model_id not in MODEL_ALIASES:
        raise ModelNotFoundError(f"the model '{model_id[:100]}' does not exist", param="model")
    return web.json_response(_model(model_id))

"""What the gateway does with each Chat Completions request field: the table the README shows.

FlowGpt takes only the messages, the model and the temperature, so every other field
is either emulated here, accepted and ignored (only where ignoring cannot change what
the answer means), or refused by name. A refused field with a value that asks for
nothing (``tools: []``, ``top_p: 1``, ``logprobs: false``) passes: it is what the
gateway does anyway. A field outside the table is refused whatever its value. With
``GATEWAY_DROP_PARAMS=true`` refused fields are dropped instead (LiteLLM's
``drop_params``), and the caller is told which.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.errors import UnsupportedParameterError

Treatment = Literal["honoured", "emulated", "ignored", "refused"]


def _is(*values: object) -> Callable[[Any], bool]:
    return lambda value: any(value == harmless and type(value) is type(harmless) for harmless in values)


def _empty(value: Any) -> bool:
    return value in ([], {})


def _never(_: Any) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Field:
    """One request field: its treatment, why, and for a refused one the values that ask for nothing."""

    name: str
    treatment: Treatment
    reason: str
    harmless: Callable[[Any], bool] = _never


FIELDS: Final[tuple[Field, ...]] = (
    Field("messages", "honoured", "sent as FlowGpt's question, history and system prompt (shapes below)"),
    Field("model", "honoured", "a FlowGpt model or an alias (`GET /v1/models`)"),
    Field("stream", "honoured", "SSE chunks, or one JSON object"),
    Field(
        "stream_options",
        "honoured",
        "`include_usage: true` adds the final usage chunk; `include_obfuscation` is ignored",
    ),
    Field("temperature", "honoured", "passed on (0..2)"),
    Field("n", "honoured", "1 only: FlowGpt gives one answer (another value is a 400 `invalid_request`)"),
    Field("max_tokens", "emulated", 'the gateway stops at the limit, cancels the upstream, `finish_reason: "length"`'),
    Field("max_completion_tokens", "emulated", "as `max_tokens` (the smaller wins when both are set)"),
    Field("stop", "emulated", "a string or up to 4: cut before the first match, across chunks; upstream cancelled"),
    Field("user", "ignored", "an end-user id for abuse tracking; does not change the answer"),
    Field("safety_identifier", "ignored", "as `user`"),
    Field("metadata", "ignored", "tags for stored completions; nothing is stored"),
    Field("store", "ignored", "nothing is stored; the answer is the same"),
    Field("service_tier", "ignored", "a billing and latency tier; FlowGpt has one"),
    Field("prompt_cache_key", "ignored", "a cache hint; does not change the answer"),
    Field("prompt_cache_retention", "ignored", "a cache hint; does not change the answer"),
    Field("prompt_cache_options", "ignored", "a cache hint; does not change the answer"),
    Field("prediction", "ignored", "predicted output only speeds an answer up; it does not change it"),
    Field("seed", "ignored", "best-effort determinism even at OpenAI; the answer means the same without it"),
    Field("parallel_tool_calls", "ignored", "meaningless without `tools`, which are refused"),
    Field("tools", "refused", "FlowGpt cannot call tools (`[]` passes)", _empty),
    Field("tool_choice", "refused", 'FlowGpt cannot call tools (`"none"` passes)', _is("none")),
    Field("functions", "refused", "FlowGpt cannot call functions (`[]` passes)", _empty),
    Field("function_call", "refused", 'FlowGpt cannot call functions (`"none"` passes)', _is("none")),
    Field(
        "response_format",
        "refused",
        'FlowGpt cannot constrain its output to JSON (`{"type": "text"}` passes)',
        _is({"type": "text"}),
    ),
    Field("logprobs", "refused", "FlowGpt reports no log probabilities (`false` passes)", _is(False)),
    Field("top_logprobs", "refused", "FlowGpt reports no log probabilities (`0` passes)", _is(0)),
    Field("top_p", "refused", "FlowGpt samples its own way (`1` passes)", _is(1, 1.0)),
    Field("frequency_penalty", "refused", "FlowGpt takes no penalties (`0` passes)", _is(0, 0.0)),
    Field("presence_penalty", "refused", "FlowGpt takes no penalties (`0` passes)", _is(0, 0.0)),
    Field("logit_bias", "refused", "FlowGpt takes no token biases (`{}` passes)", _empty),
    Field("reasoning_effort", "refused", 'FlowGpt has no reasoning setting (`"none"` passes)', _is("none")),
    Field("verbosity", "refused", 'FlowGpt has no verbosity setting (`"medium"`, the default, passes)', _is("medium")),
    Field("modalities", "refused", 'FlowGpt answers text only (`["text"]` passes)', _is(["text"])),
    Field("audio", "refused", "FlowGpt answers text only"),
    Field("web_search_options", "refused", "FlowGpt cannot search the web"),
    Field("moderation", "refused", "the gateway runs no moderation; ignoring it would pass unmoderated text"),
)
BY_NAME: Final = {field.name: field for field in FIELDS}
REFUSABLE: Final[tuple[str, ...]] = tuple(field.name for field in FIELDS if field.treatment == "refused")
# A field outside the table (vLLM's top_k, min_p, guided_json...) is refused too: ignored, it
# would change sampling silently. Dropped, it is counted under this one label.
OTHER: Final = "other"
# The label values of gateway_dropped_params_total: bounded by the table, never by client input.
DROP_LABELS: Final[tuple[str, ...]] = (*REFUSABLE, OTHER)
_LEAVE_IT_OUT: Final = "Leave it out, or ask the operator to set GATEWAY_DROP_PARAMS=true to have it dropped"
_PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The fields that pass whatever their value: a request with no others has nothing to screen (one set
# lookup per key, instead of a look for each of the refused fields).
_PASSING: Final = frozenset(field.name for field in FIELDS if field.treatment != "refused")


def drop_label(name: str) -> str:
    """The ``param`` label a dropped field is counted under: its name if the table has it, else ``other``."""
    return name if name in BY_NAME else OTHER


def screen(data: dict[str, Any], *, drop: bool) -> tuple[str, ...]:
    """Refuse (or, with ``drop``, remove from ``data``) every refused field that asks for something.

    Fields outside the table are refused whatever their value. Returns the names dropped,
    in table order, then those outside it in request order (a name that is not a plain
    identifier, which the response header could not carry, as ``other``). ``null`` counts as absent.
    """
    if _PASSING.issuperset(data):
        return ()  # the usual request: nothing to look for
    return screen_each(data, drop=drop)


def screen_each(data: dict[str, Any], *, drop: bool) -> tuple[str, ...]:
    """:func:`screen` without its shortcut: every refused field looked for by name."""
    dropped: list[str] = []
    for name in REFUSABLE:
        if name not in data:
            continue
        value = data[name]
        if value is None or BY_NAME[name].harmless(value):
            continue
        if not drop:
            raise UnsupportedParameterError(
                f"'{name}' is not supported: {BY_NAME[name].reason.split(' (')[0]}. {_LEAVE_IT_OUT}",
                param=name,
            )
        del data[name]
        dropped.append(name)
    for name in [name for name in data if name not in BY_NAME]:
        if not drop:
            shown = name[:64]
            raise UnsupportedParameterError(
                f"'{shown}' is not a Chat Completions field the gateway knows, and ignoring it could "
                f"change the answer. {_LEAVE_IT_OUT}",
                param=shown,
            )
        del data[name]
        dropped.append(name if _PLAIN_NAME.fullmatch(name) else OTHER)
    return tuple(dropped)

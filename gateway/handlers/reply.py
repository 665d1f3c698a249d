"""What one chat answer needs besides its text: the model, the prompt's tokens, its cutter, and usage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.openai_schema import usage

if TYPE_CHECKING:
    from gateway.cutter import Cutter
    from gateway.metrics import Metrics
    from gateway.tokens import TokenCounter


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The parts of a request an answer is shaped by: ``cutter`` makes a fresh one per attempt."""

    model: str
    prompt_tokens: int
    include_usage: bool
    cutter: Callable[[], Cutter]

    async def settle(self, metrics: Metrics, route: str, cutter: Cutter, counter: TokenCounter) -> dict[str, int]:
        """Count the answer's tokens (what the client received) and return its ``usage``.

        With ``max_tokens`` the cutter has counted the text as it went: its count is used, not made again.
        Otherwise the text is counted once here (a long one off the loop).
        """
        counted = cutter.sent_tokens()
        completion_tokens = counted if counted is not None else await counter.count_soon(cutter.text)
        metrics.count_tokens(route, self.model, prompt=self.prompt_tokens, completion=completion_tokens)
        return usage(self.prompt_tokens, completion_tokens)

"""Server-sent events for the HTTP transport's streams (``/v1/generate`` and OpenAI's
``stream: true``).

``event_stream`` waits for the first group of events before it answers, so a request that
fails before generating anything (a bad field, an unknown model, a full queue) gets its
HTTP status, not a 200 stream. Each event is one ``data: {json}`` message, a group of
them is written as one body part (one message from the replica to Serve's proxy: the
model replica sends tokens in groups, ``limits.stream_interval_s``), and the stream ends
with ``data: [DONE]``; a failure after the first event is sent as one
``data: {"error": ...}`` message and ends the stream. When the client goes away, Serve
cancels the request: the events' iterator is closed, which stops the generation.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from saeserve.server.http.errors import ParamNames, status_body
from saeserve.server.operations import OperationFailed

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def event_stream(
    groups: AsyncGenerator[list[dict[str, Any]], None], params: ParamNames | None = None
) -> StreamingResponse:
    """Raises OperationFailed if ``groups`` fails before its first group."""
    try:
        first = await anext(groups)
    except StopAsyncIteration:
        first = []

    async def body() -> AsyncIterator[str]:
        async with contextlib.aclosing(groups):
            yield "".join(sse(e) for e in first)
            try:
                async for group in groups:
                    yield "".join(sse(e) for e in group)
            except OperationFailed as failed:
                yield sse(status_body(failed.status, params))
                return
            yield DONE

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

"""Server-sent events for the HTTP transport's streams (``/v1/generate`` and OpenAI's
``stream: true``).

``event_stream`` waits for the first event before it answers, so a request that fails
before generating anything (a bad field, an unknown model, a full queue) gets its HTTP
status, not a 200 stream. Then each event is one ``data: {json}`` message and the stream
ends with ``data: [DONE]``; a failure after the first event is sent as one
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
    events: AsyncGenerator[dict[str, Any], None], params: ParamNames | None = None
) -> StreamingResponse:
    """Raises OperationFailed if ``events`` fails before its first event."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[str]:
        async with contextlib.aclosing(events):
            if first is not None:
                yield sse(first)
            try:
                async for event in events:
                    yield sse(event)
            except OperationFailed as failed:
                yield sse(status_body(failed.status, params))
                return
            yield DONE

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

"""The fallback's hand-off: get flushed buffers processed off the request path.

With no scheduler (buffer_sweeper off), ingest says when a buffer is due now. The webhook has
already stored the message and must answer at once, so the sweep pass runs elsewhere:
in a long-lived server as an in-process task, on Lambda as an asynchronous invocation of the
sweeper function (a Lambda freezes once it has answered, so no work may trail the response).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable, Protocol, Sequence

log = logging.getLogger(__name__)

FLUSH_EVENT_SOURCE = "chatbuffer.flush"


class Dispatcher(Protocol):
    async def dispatch(self, buffer_ids: Sequence[int], *, fallback: bool = True) -> None:
        """Start a sweep pass elsewhere: a fallback flush of `buffer_ids`, or (fallback False)
        a full pass, as POST /sweep asks for."""


class InProcessDispatcher:
    """Runs a sweep pass as a background task of this process (chatbuffer serve, tests)."""

    def __init__(self, run_pass: Callable[..., Awaitable[object]]) -> None:
        self._run_pass = run_pass
        self._tasks: set[asyncio.Task[object]] = set()

    async def dispatch(self, buffer_ids: Sequence[int], *, fallback: bool = True) -> None:
        task = asyncio.create_task(self._guarded(list(buffer_ids), fallback))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, buffer_ids: list[int], fallback: bool) -> None:
        try:
            await self._run_pass(buffer_ids, fallback=fallback)
        except Exception:  # the buffers stay due: the next pass or webhook picks them up
            log.exception("fallback sweep pass failed")

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))


class LambdaDispatcher:
    """Invokes the sweeper function asynchronously (InvocationType=Event) with the buffer ids."""

    def __init__(self, function_name: str) -> None:
        self._function_name = function_name
        self._client = None

    async def dispatch(self, buffer_ids: Sequence[int], *, fallback: bool = True) -> None:
        payload = json.dumps({"source": FLUSH_EVENT_SOURCE, "buffer_ids": list(buffer_ids),
                              "fallback": fallback}).encode()
        await asyncio.to_thread(self._invoke, payload)

    def _invoke(self, payload: bytes) -> None:
        if self._client is None:
            import boto3  # in the Lambda runtime already; loaded only when the fallback fires

            self._client = boto3.client("lambda")
        self._client.invoke(FunctionName=self._function_name, InvocationType="Event", Payload=payload)

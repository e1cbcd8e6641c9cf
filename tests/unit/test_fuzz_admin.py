"""Property-based tests of what the admin API reads from a request before any SQL runs: numbers in
the query string and the pause body. Anything else than a clean AdminError (a 400) would be a 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from shared.web.admin import AdminError, _int, _json_body


@settings(max_examples=500, deadline=None)
@given(st.none() | st.text(max_size=40))
def test_a_number_in_the_query_is_a_whole_number_in_range_or_a_400(value: str | None) -> None:
    try:
        number = _int(value, "limit", default=50, high=200)
    except AdminError as exc:
        assert exc.status_code == 400
        return
    if value in (None, ""):
        assert number == 50  # the default
    else:
        assert value is not None and value.isascii() and value.isdecimal()
        assert number == int(value) and 1 <= number <= 200


def request_with(body: bytes) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3))))
def test_a_body_is_a_json_object_or_a_400(body: bytes) -> None:
    try:
        value = asyncio.run(_json_body(request_with(body)))
    except AdminError as exc:
        assert exc.status_code == 400
        return
    assert isinstance(value, dict)

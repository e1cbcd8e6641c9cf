"""Property-based tests (Hypothesis) of the Chatwoot parser and signature checks: random bytes,
deep nesting, huge strings, odd unicode, and every field of every fixture given a value of another
type. The parser returns an event or raises BadPayload; the checks pass or raise BadSignature.
Nothing else may escape: anything else would be an unhandled 500."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.channels import chatwoot
from tests.conftest import FIXTURES

FIXTURE_NAMES = sorted(p.stem for p in (FIXTURES / "chatwoot").glob("*.json"))
STATUSES = frozenset({"pending"})
SECRET = "fuzz-secret"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
odd_values = (json_values | st.just("x" * 200_000) | st.just("\x00\ud7ff\ufffd\U0010ffff")
              | st.integers(min_value=10**30, max_value=10**40) | st.just(-1) | st.just(1e308) | st.just([None]))


def parses_or_refuses(body: bytes) -> None:
    try:
        event = chatwoot.parse_event(body, STATUSES)
    except chatwoot.BadPayload:
        return
    assert event is not None


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON document, the document's own fields first."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append(prefix + (key,))
            found += paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append(prefix + (index,))
            found += paths(item, prefix + (index,))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_are_an_event_or_bad_payload(body: bytes) -> None:
    parses_or_refuses(body)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_document_is_an_event_or_bad_payload(document: Any) -> None:
    parses_or_refuses(json.dumps(document).encode())


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURE_NAMES), st.data(), odd_values)
def test_every_field_of_every_fixture_may_hold_anything(name: str, data: st.DataObject, value: Any) -> None:
    document = json.loads((FIXTURES / "chatwoot" / f"{name}.json").read_text())
    path = data.draw(st.sampled_from(paths(document)))
    parses_or_refuses(json.dumps(replaced(document, path, value)).encode())


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(FIXTURE_NAMES), st.integers(min_value=1, max_value=3000))
def test_deep_nesting_anywhere_is_refused_or_read(name: str, depth: int) -> None:
    document = json.loads((FIXTURES / "chatwoot" / f"{name}.json").read_text())
    nested: Any = "deep"
    for _ in range(depth):
        nested = [nested]
    body = json.dumps({**document, "content_attributes": nested}).encode() if depth < 900 else (
        b'{"event": "message_created", "content_attributes": ' + b"[" * depth + b"]" * depth + b"}")
    parses_or_refuses(body)


@settings(max_examples=500, deadline=None)
@given(st.none() | st.text(max_size=60), st.none() | st.text(max_size=80), st.binary(max_size=200))
def test_signature_check_passes_or_refuses_whatever_the_headers(timestamp: str | None, signature: str | None,
                                                                body: bytes) -> None:
    try:
        chatwoot.verify_signature(SECRET, timestamp, signature, body, now=time.time())
    except chatwoot.BadSignature:
        return
    raise AssertionError("a random signature was accepted")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.binary(max_size=200))
def test_any_signature_text_at_a_fresh_timestamp_is_refused_not_a_crash(signature: str, body: bytes) -> None:
    """Header values arrive as Latin-1 text: é, ÿ and friends must be a refusal, not a TypeError."""
    try:
        chatwoot.verify_signature(SECRET, str(int(time.time())), signature, body, now=time.time())
    except chatwoot.BadSignature:
        return
    raise AssertionError("a random signature was accepted")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=-290, max_value=290))
def test_a_true_signature_passes_and_any_change_of_a_byte_fails(body: bytes, skew: int) -> None:
    timestamp = str(int(time.time()) + skew)
    signature = chatwoot.sign(SECRET, timestamp, body)
    chatwoot.verify_signature(SECRET, timestamp, signature, body, now=time.time())
    try:
        chatwoot.verify_signature(SECRET, timestamp, signature, body + b"x", now=time.time())
    except chatwoot.BadSignature:
        return
    raise AssertionError("a changed body kept its signature")


@settings(max_examples=300, deadline=None)
@given(st.none() | st.text(max_size=60))
def test_token_check_passes_or_refuses(given_token: str | None) -> None:
    try:
        chatwoot.verify_token("expected-token", given_token)
    except chatwoot.BadSignature:
        return
    assert given_token == "expected-token"

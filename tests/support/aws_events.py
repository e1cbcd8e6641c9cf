"""TEST CODE: AWS event shapes as Lambda receives them (API Gateway HTTP API v2, EventBridge)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any


def http_api_event(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                   query: str = "", base64_body: bool = False) -> dict[str, Any]:
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {  # API Gateway lower-cases header names
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "rest-client-ruby",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            "content-length": str(len(body)),
            **{k.lower(): v for k, v in (headers or {}).items()},
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "rest-client-ruby"},
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/chatbuffer-dev-sweeper"],
        "detail": {},
    }


class LambdaContext:
    """The parts of the Lambda context object the handlers use."""

    function_name = "chatbuffer-test-sweeper"
    aws_request_id = "test-request"

    def __init__(self, timeout_seconds: float = 150) -> None:
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)

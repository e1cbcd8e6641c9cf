from __future__ import annotations

import re

# A database error's message and DETAIL can quote the row it refused ("Failing row contains
# (...)", "Key (external_id)=(...)", 'invalid input syntax for type json: "..."'): customer text
# and phone numbers, which must not reach a log line. What is quoted or bracketed is cut out.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\((?:[^()]|\([^()]*\))*\)')


def redacted(text: str) -> str:
    """`text` with every quoted or parenthesised part replaced by an ellipsis."""
    return _QUOTED.sub(lambda m: m.group(0)[0] + "…" + m.group(0)[-1], text)


class StoreError(Exception):
    """The database refused a call; the message keeps its reason, never the data it refused."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # SQLSTATE, when the database gave one


class StoreUnavailable(StoreError):
    """The database could not be reached."""

"""Feed cursors (pure): base64url JSON of the last item's score and post id, the version it was read from and the
user it was issued to, e.g. ``{"s": 3.25, "p": "1790000000000123", "v": "20261101T0000Z.7", "u": "42"}``.

A page is the items strictly after the cursor in (score, post id) descending order, read from the cursor's version:
within one version the candidate set is fixed, so pages neither repeat nor skip an item, even when a newer version
is published between two pages (the old version lives for the grace period; after it the cursor expires).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

from serving.errors import BadCursorError
from serving.keys import parse_version

MAX_CURSOR_CHARS = 512
MAX_ID = (1 << 63) - 1


@dataclass(frozen=True)
class Cursor:
    score: float
    post_id: int
    version: str
    user_id: int

    def is_after(self, score: float, post_id: int) -> bool:
        """Whether (score, post_id) comes after this cursor in the feed's order (score, then post id, descending)."""
        return (score, post_id) < (self.score, self.post_id)


def encode_cursor(cursor: Cursor) -> str:
    body = {"s": cursor.score, "p": str(cursor.post_id), "v": cursor.version, "u": str(cursor.user_id)}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _id(value: object, what: str) -> int:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 19 or int(value) > MAX_ID:
        raise BadCursorError(f"bad cursor: {what} must be a decimal id string, got {value!r}")
    return int(value)


def decode_cursor(text: str, user_id: int) -> Cursor:
    """The cursor ``text`` issued to ``user_id``; :class:`BadCursorError` saying what is wrong otherwise."""
    if len(text) > MAX_CURSOR_CHARS:
        raise BadCursorError(f"bad cursor: {len(text)} characters; a cursor has at most {MAX_CURSOR_CHARS}")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadCursorError("bad cursor: not the base64 JSON this API issues (pass next_cursor back as is)") from None
    if not isinstance(body, dict) or set(body) != {"s", "p", "v", "u"}:
        raise BadCursorError("bad cursor: expected the fields s, p, v and u")
    score = body["s"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise BadCursorError(f"bad cursor: score must be a finite number, got {score!r}")
    version = body["v"]
    try:
        parse_version(version)
    except ValueError as e:
        raise BadCursorError(f"bad cursor: {e}") from None
    issued_to = _id(body["u"], "user id")
    if issued_to != user_id:
        raise BadCursorError(f"bad cursor: it was issued to another user, not to user {user_id}")
    return Cursor(float(score), _id(body["p"], "post id"), version, issued_to)

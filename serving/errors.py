"""The serving package's errors: each message names the family (table) or group, the key, and what was expected."""

from __future__ import annotations


class ServingError(Exception):
    """Base of every serving error."""


class ServingInputError(ServingError, ValueError):
    """The batch to publish is missing or malformed (a NaN score, a timeline over the cap, a wrong-length vector)."""


class ServingConfigError(ServingError):
    """The Redis server or the settings disagree with what the publisher was told to produce (e.g. the encoding)."""


class ServingPublishError(ServingError):
    """A publish could not complete (Redis failed, the pointer moved meanwhile, an older batch); the previous
    version stays current."""


class ServingVerificationError(ServingPublishError):
    """What Redis holds for the new version differs from the source; the version is never made current."""


class NotPublishedError(ServingError):
    """Nothing has been published for a key-family group yet."""


class UnknownUserError(ServingError, LookupError):
    """The current version holds nothing for this user."""


class BadCursorError(ServingError, ValueError):
    """A cursor that this service did not issue, or that belongs to another user."""


class CursorExpiredError(ServingError):
    """The version a cursor was issued for has expired (past the grace period): restart from the first page."""

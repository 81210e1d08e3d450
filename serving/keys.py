"""The Redis key schema (pure): key-family groups, versions, and the physical key of every logical key.

A logical key is the design's read contract (``timeline:{user_id}``, ``post:{post_id}``, ...) with the id inside
literal braces: a Redis Cluster hash tag, so every key of one user (timeline, pull authors, story ring, explore,
embedding) lives in one slot. A physical key is the logical key behind its group's version:
``<prefix>:<group>:<version>:<logical>``, e.g. ``sv:feed:20261101T0000Z.7:timeline:{42}``. Each group has one
pointer, ``<prefix>:{<group>}:current``, naming its current version; the pointer, the group's manifests, its version
index and its sequence share the hash tag ``{<group>}`` so the switch script touches one slot.

A version is ``<batch_id>.<seq>``: the batch (the precompute run's data-interval end, ``YYYYMMDDTHHMMZ``) and the
group's publish sequence number, unique per attempt, so an interrupted publish never shares keys with its re-run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

# Each group has its own pointer: an hourly feed publish does not copy the weekly embeddings.
GROUPS: dict[str, tuple[str, ...]] = {
    "feed": ("feed_timelines", "celebrity_posts", "pull_authors", "post_meta", "fanout_config"),
    "stories": ("story_rings",),
    "explore": ("explore_candidates", "user_embeddings", "item_embeddings"),
}
FAMILY_GROUP: dict[str, str] = {family: group for group, families in GROUPS.items() for family in families}

BATCH_ID_RE = re.compile(r"^\d{8}T\d{4}Z$")
VERSION_RE = re.compile(r"^(\d{8}T\d{4}Z)\.([1-9]\d*)$")


def check_group(group: str) -> str:
    if group not in GROUPS:
        raise ValueError(f"unknown key-family group {group!r}; known: {', '.join(GROUPS)}")
    return group


def check_batch_id(batch_id: str) -> str:
    """A batch id is the run's data-interval end as ``YYYYMMDDTHHMMZ`` (UTC); it sorts as text."""
    if not isinstance(batch_id, str) or not BATCH_ID_RE.match(batch_id):
        raise ValueError(f"batch_id {batch_id!r}: expected the data-interval end as YYYYMMDDTHHMMZ (20261101T0000Z)")
    batch_end(batch_id)  # a real instant
    return batch_id


def batch_end(batch_id: str) -> datetime:
    try:
        return datetime.strptime(batch_id, "%Y%m%dT%H%MZ").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"batch_id {batch_id!r} is not a valid UTC instant (YYYYMMDDTHHMMZ)") from None


def batch_end_ms(batch_id: str) -> int:
    return int(batch_end(batch_id).timestamp() * 1000)


def batch_id_of(instant: datetime) -> str:
    """The batch id of a data-interval end (an aware datetime)."""
    if instant.tzinfo is None:
        raise ValueError(f"batch instant {instant!r} must be timezone-aware (UTC)")
    return instant.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def make_version(batch_id: str, seq: int) -> str:
    if seq < 1:
        raise ValueError(f"version sequence must be >= 1, got {seq}")
    return f"{check_batch_id(batch_id)}.{seq}"


def parse_version(version: str) -> tuple[str, int]:
    """``(batch_id, seq)`` of a version string; ValueError on anything else."""
    m = VERSION_RE.match(version) if isinstance(version, str) else None
    if not m:
        raise ValueError(f"version {version!r}: expected <batch_id>.<seq>, e.g. 20261101T0000Z.7")
    return m.group(1), int(m.group(2))


# --- logical keys (the design's read contract) ----------------------------------------------------------------------


def timeline_key(user_id: int) -> str:
    return f"timeline:{{{user_id}}}"


def celebrity_posts_key(author_id: int) -> str:
    return f"celebrity:{{{author_id}}}:posts"


def celebrity_recent_key(author_id: int) -> str:
    """A pull-mode author's merge candidates, derived by the publisher: its ``posts_per_pull_author`` latest posts
    created in the ``pull_window_hours`` before the batch end that have metadata, scored by ``base_score``."""
    return f"celebrity:{{{author_id}}}:recent"


def pull_authors_key(user_id: int) -> str:
    return f"user:{{{user_id}}}:pull_authors"


def post_key(post_id: int) -> str:
    return f"post:{{{post_id}}}"


def fanout_config_key() -> str:
    return "config:fanout"


def story_ring_key(user_id: int) -> str:
    return f"story_ring:{{{user_id}}}"


def story_ring_authors_key(user_id: int) -> str:
    """The ring's companion hash: author -> ``{"unseen", "score", "expires_at"}`` (the zset holds the order only)."""
    return f"story_ring:{{{user_id}}}:authors"


def explore_key(user_id: int) -> str:
    return f"explore:{{{user_id}}}"


def user_embedding_key(user_id: int) -> str:
    return f"emb:user:{{{user_id}}}"


def item_embedding_key(post_id: int) -> str:
    return f"emb:item:{{{post_id}}}"


# --- physical keys --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpace:
    """Physical keys under one prefix (``serving.key_prefix``)."""

    prefix: str = "sv"

    # Control keys of a group: one hash slot per group ({group} tag).
    def pointer(self, group: str) -> str:
        return f"{self.prefix}:{{{check_group(group)}}}:current"

    def manifest(self, group: str, version: str) -> str:
        return f"{self.prefix}:{{{check_group(group)}}}:manifest:{version}"

    def versions(self, group: str) -> str:
        """Sorted set of the group's versions by sequence number (for status and expiry)."""
        return f"{self.prefix}:{{{check_group(group)}}}:versions"

    def sequence(self, group: str) -> str:
        return f"{self.prefix}:{{{check_group(group)}}}:seq"

    # Data keys: the logical key behind the version.
    def data_prefix(self, group: str, version: str) -> str:
        return f"{self.prefix}:{check_group(group)}:{version}:"

    def data(self, group: str, version: str, logical: str) -> str:
        return f"{self.data_prefix(group, version)}{logical}"

    def data_pattern(self, group: str, version: str) -> str:
        """A SCAN MATCH pattern for every data key of a version (versions hold no glob characters)."""
        return f"{self.data_prefix(group, version)}*"

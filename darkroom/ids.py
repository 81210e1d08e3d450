"""Time-sortable 64-bit IDs, exactly the seed's ``instagram_id()``.

    id = (ms_since_epoch << 23) | (shard << 10) | sequence
    41 bits of milliseconds since 2011-08-24T21:07:01.721Z (epoch 1314220021721),
    13 bits of logical shard (8,192 shards), 10 bits of sequence (1,024 ids per ms per shard).

IDs sort by creation time; an object created by a user lives on the user's shard, so the shard is read from any of
its IDs without a lookup. Scalar, numpy and Spark-column forms compute the same numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

EPOCH_MS = 1314220021721
TIME_BITS, SHARD_BITS, SEQ_BITS = 41, 13, 10
N_SHARDS = 1 << SHARD_BITS
MAX_SEQ = (1 << SEQ_BITS) - 1
# The top time bit would make the signed 64-bit BIGINT negative (in 2046), so positive ids use 40 of the 41 bits.
MAX_MS = (1 << (TIME_BITS - 1)) - 1


class DecodedId(NamedTuple):
    ms: int  # unix milliseconds
    shard: int
    seq: int

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.ms / 1000, tz=UTC)


def encode(unix_ms: int, shard: int, seq: int) -> int:
    """Mint an id; raises ValueError naming the field that is out of range."""
    rel = unix_ms - EPOCH_MS
    if not 0 <= rel <= MAX_MS:
        raise ValueError(f"timestamp {unix_ms} ms is outside the positive 64-bit id window after epoch {EPOCH_MS}")
    if not 0 <= shard < N_SHARDS:
        raise ValueError(f"shard {shard} is outside 0..{N_SHARDS - 1}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence {seq} is outside 0..{MAX_SEQ}")
    return (rel << (SHARD_BITS + SEQ_BITS)) | (shard << SEQ_BITS) | seq


def decode(id_: int) -> DecodedId:
    if not 0 <= id_ < (1 << 63):
        raise ValueError(f"id {id_} is not a positive 63-bit integer")
    return DecodedId(
        ms=(id_ >> (SHARD_BITS + SEQ_BITS)) + EPOCH_MS,
        shard=(id_ >> SEQ_BITS) & (N_SHARDS - 1),
        seq=id_ & MAX_SEQ,
    )


def shard_of(id_: int) -> int:
    """The logical shard an object lives on (routing without a lookup)."""
    return (id_ >> SEQ_BITS) & (N_SHARDS - 1)


def shard_for_user(user_id: int, n_logical_shards: int = N_SHARDS) -> int:
    """The shard every object of this user is minted on: the user's own id shard, folded onto fewer shards."""
    return shard_of(user_id) % n_logical_shards


# --- Spark column forms (imported lazily so the core stays light) -------------------------------------------------
def encode_col(unix_ms, shard, seq):
    """Spark Column: the same arithmetic as ``encode`` (inputs are Columns of longs)."""
    from pyspark.sql import functions as F

    return (
        F.shiftleft((unix_ms - F.lit(EPOCH_MS)).cast("long"), SHARD_BITS + SEQ_BITS)
        .bitwiseOR(F.shiftleft(shard.cast("long"), SEQ_BITS))
        .bitwiseOR(seq.cast("long").bitwiseAND(F.lit(MAX_SEQ)))
    )


def shard_col(id_col):
    from pyspark.sql import functions as F

    return F.shiftright(id_col, SEQ_BITS).bitwiseAND(F.lit(N_SHARDS - 1)).cast("int")


def ms_col(id_col):
    from pyspark.sql import functions as F

    return F.shiftright(id_col, SHARD_BITS + SEQ_BITS) + F.lit(EPOCH_MS)

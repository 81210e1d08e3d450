"""What the online feed reads: the Redis key schema, the atomic versioned publisher, the reference readers and a
small HTTP API. See serving/README.md for the read contract."""

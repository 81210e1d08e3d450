"""The feed's precomputed serving tables: push timelines scored by the ranker, the pull side, post metadata."""

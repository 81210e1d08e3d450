"""Batch scoring of (user, post, author) candidates by a registered ranker (feed timelines, Explore candidates)."""

"""The synthetic-world generator: a seeded Instagram-like world written to the landing datasets."""

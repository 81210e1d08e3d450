"""Push/pull fan-out policy for the feed: the cost model, the tuned threshold and a real-Redis replay of a day."""

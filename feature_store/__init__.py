"""The feature store: entities, feature views with a TTL, point-in-time training sets, materialisation to Redis."""

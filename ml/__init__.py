"""darkroom's models: the multi-task feed ranker (``ml.ranker``) and evaluation metrics (``ml.metrics``)."""

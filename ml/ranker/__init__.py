"""The multi-task feed ranker: features (``features``), streaming data (``data``), the module (``model``),
training (``train``), baselines (``baselines``) and evaluation (``evaluate``). See ``ml/README.md``."""

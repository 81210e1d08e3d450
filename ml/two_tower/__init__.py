"""Two-tower retrieval: the batch side (model, training, encoders, offline evaluation, FAISS indexes).

``faiss`` is imported here, before any submodule imports torch: in one process faiss must be loaded before torch
(their OpenMP runtimes clash the other way round). Importing any ``ml.two_tower`` module therefore gets the order
right, unless torch was already imported by something else in the process.
"""

import faiss  # noqa: F401  (must precede torch; see above)

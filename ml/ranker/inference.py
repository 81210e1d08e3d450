"""Running a trained ranker: the scorer the publisher and the evaluation use, and its MLflow pyfunc form.

A model is three things that travel together: the architecture (``RankerArch``), the fitted feature spec (which
columns, their hashing, the dense statistics) and the state dict. :class:`RankerScorer` holds them and scores Arrow
or pandas rows in batches; :class:`RankerPyfunc` is the same scorer as an MLflow ``pyfunc`` model, so
``models:/ranker@champion`` loads anywhere MLflow does (a Spark ``mapInPandas`` included), with a signature and
an input example logged beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa

from ml.ranker.features import HEADS, FeatureSpec, encode
from ml.ranker.model import MultiTaskRanker, RankerArch, value_score

if TYPE_CHECKING:
    from collections.abc import Mapping

ARCH_FILE = "arch.json"
SPEC_FILE = "feature_spec.json"
STATE_FILE = "state_dict.pt"
SCORE_BATCH_ROWS = 8192


@dataclass
class RankerScorer:
    model: MultiTaskRanker
    spec: FeatureSpec
    arch: RankerArch
    value_weights: dict[str, float]

    def predict_table(self, data: pa.Table) -> dict[str, np.ndarray]:
        """Per-head probabilities (and ``value``, the weighted sum) for every row, in row order."""
        import torch

        self.spec.validate(data.schema, labels=False, where="rows to score")
        self.model.eval()
        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, max(data.num_rows, 1), SCORE_BATCH_ROWS):
                chunk = data.slice(start, SCORE_BATCH_ROWS)
                if chunk.num_rows == 0:
                    break
                rows = encode(chunk, self.spec, labels=False)
                logits = self.model(
                    torch.from_numpy(rows.ids),
                    torch.from_numpy(rows.dense),
                    [torch.from_numpy(v) for v, _ in rows.bags],
                    [torch.from_numpy(o) for _, o in rows.bags],
                )
                out.append(torch.sigmoid(logits).numpy())
        probs = np.concatenate(out) if out else np.zeros((0, len(HEADS)), dtype=np.float32)
        result = {h: probs[:, j].astype(np.float64) for j, h in enumerate(HEADS)}
        result["value"] = np.asarray(value_score(probs, self.value_weights), dtype=np.float64)
        return result

    def predict_pandas(self, frame: pd.DataFrame) -> pd.DataFrame:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        # A column whose rows are all empty lists (no post in the frame has a hashtag) comes back from pandas as
        # list<null>: it is still a list of strings, with none in it.
        for c in self.spec.multi_columns:
            if c in table.column_names and pa.types.is_list(table.schema.field(c).type):
                if pa.types.is_null(table.schema.field(c).type.value_type):
                    i = table.column_names.index(c)
                    table = table.set_column(i, c, table.column(c).cast(pa.list_(pa.string())))
        scores = self.predict_table(table)
        return pd.DataFrame({f"p_{h}": scores[h] for h in HEADS} | {"value_score": scores["value"]})

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save(self, folder: Path) -> Path:
        """Writes the three parts into ``folder`` (the pyfunc's artifact)."""
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        (folder / ARCH_FILE).write_text(json.dumps(self.arch.to_dict(), indent=1))
        (folder / SPEC_FILE).write_text(json.dumps(self.spec.to_dict(), indent=1))
        (folder / "value_weights.json").write_text(json.dumps(self.value_weights))
        torch.save(self.model.state_dict(), folder / STATE_FILE)
        return folder


def scoring_frame(data: pa.Table, spec: FeatureSpec) -> pd.DataFrame:
    """The pyfunc's input contract as pandas: id columns int64, dense features float64 (NaN = missing), the context
    (``surface`` a string, ``position`` float64), multi-valued columns as lists of strings. MLflow enforces the
    logged signature, which will not turn an int64 column into a double one, so callers build their frames with
    this."""
    import pyarrow.compute as pc

    cols: dict[str, Any] = {}
    for c in spec.id_columns:
        cols[c] = pc.fill_null(data.column(c), 0).cast(pa.int64()).to_numpy(zero_copy_only=False)
    for c in spec.dense_sources():
        col = data.column(c)
        string = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        cols[c] = col.to_pylist() if string else col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    for c in spec.multi_columns:
        cols[c] = data.column(c).to_pylist()
    return pd.DataFrame(cols)


def load_scorer(folder: Path) -> RankerScorer:
    import torch

    arch = RankerArch.from_dict(json.loads((folder / ARCH_FILE).read_text()))
    spec = FeatureSpec.from_dict(json.loads((folder / SPEC_FILE).read_text()))
    weights = json.loads((folder / "value_weights.json").read_text())
    model = MultiTaskRanker(arch)
    model.load_state_dict(torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True))
    model.eval()
    return RankerScorer(model=model, spec=spec, arch=arch, value_weights=weights)


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    """``models:/ranker@...`` as a pyfunc: a DataFrame of feature columns in, p_<head> and value_score out."""

    def load_context(self, context) -> None:
        self.scorer = load_scorer(Path(context.artifacts["ranker"]))

    def predict(self, context, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        return self.scorer.predict_pandas(model_input)


def load_registered(model_uri: str) -> RankerScorer:
    """The scorer of a logged or registered model (``models:/ranker@champion``, ``runs:/...``)."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().scorer

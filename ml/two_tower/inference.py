"""Running a trained two-tower model: the batch encoder, its files, pure state-dict conversions, table checks.

A model is three things that travel together: the architecture (``TwoTowerArch``), the column names
(``TwoTowerColumns``, whose roles fix the id hashing) and the state dict. :class:`TwoTowerEncoder` holds them and
turns Arrow user or item tables into float32 embedding matrices, a batch at a time.

State dicts: the full model's keys are ``user.<...>`` and ``item.<...>`` (the towers' attribute names).
``tower_state_dict`` cuts out one tower's weights with the prefix removed, so a ``UserTower`` (served per request)
or an ``ItemTower`` (run over the catalogue) loads them alone; ``merge_tower_states`` is its inverse. Both are
pure and accept a DistributedDataParallel state dict (``module.`` prefix).

``validate_embeddings`` is the gate before an embedding table is published (an index built, vectors written): it
refuses mismatched lengths, a wrong dimension, non-finite values and duplicate ids, naming the table, the row and
what was expected (``EmbeddingTableError``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ml.ranker.model import strip_ddp_prefix
from ml.two_tower.features import ItemRows, TwoTowerColumns, UserRows, item_rows, user_rows
from ml.two_tower.model import TOWERS, ItemTower, TwoTower, TwoTowerArch, UserTower

ARCH_FILE = "arch.json"
COLUMNS_FILE = "columns.json"
STATE_FILE = "state_dict.pt"
ENCODE_BATCH_ROWS = 8192


# --- state dicts (pure) -----------------------------------------------------------------------------------------------
def _check_tower(tower: str) -> None:
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {list(TOWERS)}, got {tower!r}")


def tower_state_dict(full_state: Mapping[str, torch.Tensor], tower: str) -> dict[str, torch.Tensor]:
    """One tower's weights from the full model's state dict (a DDP one too), keys without the ``<tower>.`` prefix."""
    _check_tower(tower)
    prefix = f"{tower}."
    out = {k.removeprefix(prefix): v for k, v in strip_ddp_prefix(full_state).items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"the state dict has no {tower!r} tower weights (no key starts with {prefix!r})")
    return out


def merge_tower_states(
    user_state: Mapping[str, torch.Tensor], item_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The full model's state dict from the two towers' (the inverse of ``tower_state_dict``)."""
    out: dict[str, torch.Tensor] = {}
    for tower, state in zip(TOWERS, (user_state, item_state), strict=True):
        state = strip_ddp_prefix(state)
        already = sorted(k for k in state if k.split(".", 1)[0] in TOWERS)
        if already:
            raise ValueError(f"the {tower} state looks like a full model's (keys {already[:3]}): split it first")
        out |= {f"{tower}.{k}": v for k, v in state.items()}
    return out


def build_tower(
    arch: TwoTowerArch, tower: str, state: Mapping[str, torch.Tensor] | None = None
) -> UserTower | ItemTower:
    """A ``UserTower`` or ``ItemTower`` (eval mode), loaded from that tower's state dict when given."""
    _check_tower(tower)
    module = UserTower(arch) if tower == "user" else ItemTower(arch)
    if state is not None:
        module.load_state_dict(strip_ddp_prefix(state), strict=True)
    return module.eval()


# --- the encoder ------------------------------------------------------------------------------------------------------
@dataclass
class TwoTowerEncoder:
    """A trained model with its architecture and columns: Arrow tables in, float32 (rows, output_dim) out."""

    model: TwoTower
    arch: TwoTowerArch
    columns: TwoTowerColumns
    batch_rows: int = ENCODE_BATCH_ROWS

    def encode_users(self, table: pa.Table) -> np.ndarray:
        """One embedding per row of a user table (user columns only; see ``features``), in row order."""
        rows = user_rows(table, self.columns)  # checks the schema
        return self._encode(rows, self.model.user, table.num_rows)

    def encode_items(self, table: pa.Table) -> np.ndarray:
        """One embedding per row of an item table (item columns only), in row order."""
        rows = item_rows(table, self.columns)
        return self._encode(rows, self.model.item, table.num_rows)

    def _encode(self, rows: UserRows | ItemRows, tower: torch.nn.Module, n: int) -> np.ndarray:
        out = np.empty((n, self.arch.output_dim), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, n, self.batch_rows):
                    part = rows.take(np.arange(start, min(start + self.batch_rows, n)))
                    inputs = [torch.from_numpy(a) for a in part.model_inputs(self.arch.id_buckets)]
                    out[start : start + part.rows] = tower(*inputs).numpy()
        finally:
            self.model.train(was_training)
        return out

    def save(self, folder: Path | str) -> Path:
        """Writes ``arch.json``, ``columns.json`` and ``state_dict.pt`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ARCH_FILE).write_text(json.dumps(self.arch.to_dict(), indent=1))
        (folder / COLUMNS_FILE).write_text(json.dumps(self.columns.to_dict(), indent=1))
        torch.save(self.model.state_dict(), folder / STATE_FILE)
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> TwoTowerEncoder:
        folder = Path(folder)
        arch = TwoTowerArch.from_dict(json.loads((folder / ARCH_FILE).read_text()))
        columns = TwoTowerColumns.from_dict(json.loads((folder / COLUMNS_FILE).read_text()))
        model = TwoTower(arch)
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(strip_ddp_prefix(state), strict=True)
        return cls(model.eval(), arch, columns)


# --- embedding tables -------------------------------------------------------------------------------------------------
class EmbeddingTableError(ValueError):
    """An embedding table that must not be published; ``table``, ``row`` and ``id`` say where (row/id may be None)."""

    def __init__(self, table: str, problem: str, *, row: int | None = None, id: object = None) -> None:
        self.table, self.row, self.id = table, row, id
        where = f" row {row} (id {id!r})" if row is not None else ""
        super().__init__(f"embedding table {table!r}{where}: {problem}")


def _is_matrix(vectors: object) -> bool:
    return isinstance(vectors, np.ndarray) and vectors.dtype != object


def validate_embeddings(
    ids: Sequence[object] | np.ndarray, vectors: np.ndarray | Sequence[Sequence[float]], dim: int, name: str
) -> np.ndarray:
    """Check an (ids, vectors) table before publishing it; returns the vectors as a float32 (rows, dim) array.

    Refused, with ``EmbeddingTableError`` naming ``name``, the first offending row and its id, and what was
    expected: an empty table; a different number of ids and vectors; a vector of another length than ``dim`` (a
    ragged list is checked row by row); a NaN or infinite value; an id that appears twice (both rows named).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise EmbeddingTableError(name, f"ids have shape {ids.shape}, expected one id per row (a 1-d array)")
    n = len(ids)
    if _is_matrix(vectors):
        if vectors.ndim != 2:
            raise EmbeddingTableError(name, f"vectors have shape {vectors.shape}, expected ({n}, {dim})")
        lengths = np.full(vectors.shape[0], vectors.shape[1])
    else:  # a list of vectors (ragged lengths possible), e.g. an Arrow list column's values
        lengths = np.array([len(v) for v in vectors], dtype=np.int64)
    if len(lengths) != n:
        raise EmbeddingTableError(name, f"{n} ids but {len(lengths)} vectors; expected one vector per id")
    if n == 0:
        raise EmbeddingTableError(name, "has no rows; expected at least one embedding")
    wrong = np.flatnonzero(lengths != dim)
    if len(wrong):
        r = int(wrong[0])
        raise EmbeddingTableError(
            name,
            f"has {lengths[r]} values, expected dimension {dim} ({len(wrong)} of {n} rows have another dimension)",
            row=r,
            id=ids[r].item(),
        )
    matrix = np.asarray(vectors if _is_matrix(vectors) else np.stack(list(vectors)), dtype=np.float32)
    finite = np.isfinite(matrix)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    if len(bad_rows):
        r = int(bad_rows[0])
        col = int(np.flatnonzero(~finite[r])[0])
        raise EmbeddingTableError(
            name,
            f"has {matrix[r, col]} at position {col}, expected finite values ({len(bad_rows)} of {n} rows are not)",
            row=r,
            id=ids[r].item(),
        )
    uniq, first_rows = np.unique(ids, return_index=True)
    if len(uniq) < n:
        repeated = np.ones(n, dtype=bool)
        repeated[first_rows] = False
        r = int(np.flatnonzero(repeated)[0])  # the earliest row whose id was seen before
        first = int(first_rows[np.searchsorted(uniq, ids[r])])
        raise EmbeddingTableError(
            name,
            f"repeats the id of row {first}; expected unique ids ({n - len(uniq)} repeated row(s))",
            row=r,
            id=ids[r].item(),
        )
    return np.ascontiguousarray(matrix)

"""The MLflow model registry as darkroom uses it: versions move between aliases, never stages.

Every training run registers a version and points ``@challenger`` at it. ``@champion`` moves only through
:func:`promote` (after the gate, or by a person), and every move is appended to the registered model's
``champion_history`` tag, so :func:`rollback` can put the previous champion back. Consumers load
``models:/<name>@champion``.

The gate itself (:func:`decide`) is a pure function of two per-head metric tables computed on the same holdout:
the challenger's value-weighted normalized entropy must beat the champion's by ``margin``, and no head's NE may
be worse than the champion's by more than ``head_tolerance``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger_value_ne: float
    champion_value_ne: float | None
    margin: float
    head_tolerance: float
    head_deltas: dict[str, float] = field(default_factory=dict)  # challenger NE - champion NE, per head
    regressed_heads: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def value_weighted_ne(head_ne: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """NE averaged over the heads with the absolute value weights (hide's -10 counts as much as a weight of 10)."""
    missing = sorted(set(weights) - set(head_ne))
    if missing:
        raise ValueError(f"normalized entropy missing for heads {missing}")
    total = sum(abs(w) for w in weights.values())
    if total <= 0:
        raise ValueError("value weights are all zero")
    return sum(abs(w) * head_ne[h] for h, w in weights.items()) / total


def decide(
    challenger_ne: Mapping[str, float],
    champion_ne: Mapping[str, float] | None,
    weights: Mapping[str, float],
    *,
    margin: float,
    head_tolerance: float,
) -> GateDecision:
    """Promote or not, with the numbers. Lower NE is better; ``champion_ne`` None means there is no champion yet."""
    challenger_value = value_weighted_ne(challenger_ne, weights)
    if champion_ne is None:
        return GateDecision(
            True, "no champion yet: the first model becomes champion", challenger_value, None, margin, head_tolerance
        )
    champion_value = value_weighted_ne(champion_ne, weights)
    deltas = {h: challenger_ne[h] - champion_ne[h] for h in weights}
    regressed = tuple(sorted(h for h, d in deltas.items() if d > head_tolerance))
    gain = champion_value - challenger_value
    if regressed:
        worst = max(regressed, key=lambda h: deltas[h])
        reason = (
            f"not promoted: head(s) {', '.join(regressed)} regress beyond the tolerance {head_tolerance:g} "
            f"(worst {worst}: NE {champion_ne[worst]:.5f} -> {challenger_ne[worst]:.5f})"
        )
        promote = False
    elif gain < margin:
        reason = (
            f"not promoted: value-weighted NE {challenger_value:.5f} vs champion {champion_value:.5f} "
            f"(gain {gain:+.5f} < margin {margin:g})"
        )
        promote = False
    else:
        reason = (
            f"promoted: value-weighted NE {challenger_value:.5f} beats champion {champion_value:.5f} "
            f"by {gain:.5f} >= margin {margin:g}, no head regresses beyond {head_tolerance:g}"
        )
        promote = True
    return GateDecision(promote, reason, challenger_value, champion_value, margin, head_tolerance, deltas, regressed)


def client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(c: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def mark_challenger(c: MlflowClient, name: str, version: str) -> None:
    c.set_registered_model_alias(name, CHALLENGER, str(version))


def _history(c: MlflowClient, name: str) -> list[str]:
    raw = c.get_registered_model(name).tags.get(HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


def promote(c: MlflowClient, name: str, version: str, *, reason: str) -> str | None:
    """Point ``@champion`` at ``version``; returns the previous champion's version (None if there was none)."""
    from mlflow.exceptions import MlflowException

    version = str(version)
    try:
        c.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(f"model {name!r} has no version {version}") from e
    previous = alias_version(c, name, CHAMPION)
    if previous == version:
        return previous
    history = _history(c, name)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)
    history.append(version)
    c.set_registered_model_alias(name, CHAMPION, version)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    c.set_model_version_tag(name, version, "promotion_reason", reason)
    return previous


def rollback(c: MlflowClient, name: str) -> tuple[str, str]:
    """Put the champion before the current one back; returns (from_version, to_version)."""
    current = alias_version(c, name, CHAMPION)
    history = _history(c, name)
    if current is None or len(history) < 2 or history[-1] != current:
        raise RegistryError(f"model {name!r}: no earlier champion to roll back to (history {history})")
    history.pop()
    target = history[-1]
    c.set_registered_model_alias(name, CHAMPION, target)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    c.set_model_version_tag(name, target, "promotion_reason", f"rollback from version {current}")
    return current, target

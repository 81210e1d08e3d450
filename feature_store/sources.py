"""Reading a feature view's source table, refused with the table and column named when it cannot serve the view."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.tables import Table, table
from feature_store.definitions import FeatureView

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from darkroom.settings import DarkroomSettings


class FeatureSourceError(ValueError):
    """A source table is missing, unregistered, or lacks a column a view needs; the message names both."""


def registered(qualified_name: str, purpose: str) -> Table:
    try:
        return table(qualified_name)
    except KeyError:
        raise FeatureSourceError(
            f"{purpose}: {qualified_name} is not a registered table (darkroom/tables.py)"
        ) from None


def read_table(
    spark: SparkSession, settings: DarkroomSettings, qualified_name: str, columns: Iterable[str], *, purpose: str
) -> DataFrame:
    """The Delta table ``qualified_name``, refused unless it exists and has every column of ``columns``."""
    t = registered(qualified_name, purpose)
    if not lake.exists(spark, t, settings):
        raise FeatureSourceError(
            f"{purpose}: source table {qualified_name} does not exist (no Delta table at {t.path(settings)})"
        )
    df = lake.read(spark, t, settings)
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise FeatureSourceError(
            f"{purpose}: source table {qualified_name} has no column {', '.join(repr(c) for c in missing)} "
            f"(its columns: {', '.join(df.columns)})"
        )
    return df


def read_source(spark: SparkSession, settings: DarkroomSettings, view: FeatureView) -> DataFrame:
    """The view's source rows; refused when the table is missing, a key, the timestamp or a feature column is absent,
    or a computed feature's expression does not resolve against it."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    purpose = f"feature view {view.name}"
    plain = [n for n in view.feature_names if view.expression(n) is None]
    df = read_table(spark, settings, view.source, [*view.source_keys, view.timestamp_column, *plain], purpose=purpose)
    for name, expression in view.expressions:
        try:
            df.select(F.expr(expression)).schema  # noqa: B018 - resolving the expression is the check
        except AnalysisException as e:
            first = str(e).strip().splitlines()[0]
            raise FeatureSourceError(
                f"{purpose}: feature {name!r} = {expression} does not resolve against source table "
                f"{view.source}: {first}"
            ) from None
    return df

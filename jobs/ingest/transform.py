"""Ingest transforms: split contract-checked rows into bronze rows and quarantine rows (pure DataFrame functions)."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from darkroom.contract_spec import Contract
from data_contracts.checks import REASONS_COL, RULES_COL, key_string


def good_rows(checked: DataFrame, contract: Contract) -> DataFrame:
    """Rows that break no rule, in the contract's schema."""
    return checked.where(F.size(F.col(RULES_COL)) == 0).select(*contract.column_names)


def quarantine_rows(
    checked: DataFrame,
    contract: Contract,
    *,
    source_file: str,
    source_checksum: str,
    run_id: str,
    quarantined_at: datetime,
) -> DataFrame:
    """Rows that break at least one rule: the row as JSON (raw text where a value did not parse), rules, reasons."""
    raw_cols = {c[len("_raw_") :] for c in checked.columns if c.startswith("_raw_")}
    row = F.struct(*[F.col(f"_raw_{c}" if c in raw_cols else c).alias(c) for c in contract.column_names])
    return checked.where(F.size(F.col(RULES_COL)) > 0).select(
        F.lit(source_file).alias("source_file"),
        F.lit(source_checksum).alias("source_checksum"),
        F.lit(run_id).alias("run_id"),
        F.lit(quarantined_at).cast("timestamp").alias("quarantined_at"),
        key_string(contract).alias("row_key"),
        F.col(RULES_COL).alias("rules"),
        F.col(REASONS_COL).alias("reasons"),
        F.to_json(row, {"ignoreNullFields": "false"}).alias("row_json"),
    )


def rule_counts(checked: DataFrame) -> DataFrame:
    """(rule, rows) for every rule broken at least once."""
    return (
        checked.select(F.explode(F.col(RULES_COL)).alias("rule"))
        .groupBy("rule")
        .agg(F.count(F.lit(1)).alias("rows"))
        .select("rule", "rows")
    )

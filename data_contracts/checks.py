"""Contracts as Spark checks: file-level conformance (columns and types) and row-level rules.

``conform`` turns a freshly read file into the contract's schema or raises ``FileContractError`` naming the file and
the problem. ``with_violations`` adds, per row, the rules it breaks and a human-readable reason for each. Both are
pure DataFrame functions; reading files and writing tables is the ingest job's business.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from darkroom.contract_spec import Contract

RULES_COL = "_rules"
REASONS_COL = "_reasons"

# Source types a contract type accepts without loss (Parquet files written by other tools vary in width).
_SAFE_UPCASTS: dict[str, set[str]] = {
    "bigint": {"bigint", "int", "smallint", "tinyint"},
    "int": {"int", "smallint", "tinyint"},
    "double": {"double", "float", "bigint", "int", "smallint", "tinyint"},
    "string": {"string"},
    "boolean": {"boolean"},
    "timestamp": {"timestamp", "timestamp_ntz"},
    "date": {"date"},
}


class FileContractError(ValueError):
    """The whole file is refused; nothing was written."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def conform(raw: DataFrame, contract: Contract, *, source: str, all_strings: bool) -> DataFrame:
    """Check the column set and types, then cast to the contract's schema.

    ``all_strings`` is for text formats (CSV, JSON read as strings): every value is cast with ``try_cast`` and a value
    that does not parse becomes a row-level ``type`` violation (the raw text is kept in ``_raw_<col>``). For typed
    formats (Parquet) a column whose type is not the contract's (or a lossless widening of it) refuses the file.
    """
    want = contract.column_names
    have = raw.columns
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise FileContractError(
            source, f"wrong column set for dataset {contract.dataset}: {'; '.join(parts)}; expected exactly {want}"
        )
    if not all_strings:
        types = dict((f.name, f.dataType.simpleString()) for f in raw.schema.fields)
        wrong = [
            f"{c.name} is {types[c.name]}, expected {c.type}"
            for c in contract.columns
            if types[c.name] not in _SAFE_UPCASTS[c.type]
        ]
        if wrong:
            raise FileContractError(source, f"wrongly typed columns for dataset {contract.dataset}: {'; '.join(wrong)}")
        return raw.select(*[F.col(c.name).cast(c.type).alias(c.name) for c in contract.columns])
    return raw.select(
        *[F.col(c.name).try_cast(c.type).alias(c.name) for c in contract.columns],
        *[F.col(c.name).cast("string").alias(f"_raw_{c.name}") for c in contract.columns],
    )


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _column_rules(contract: Contract, typed_from_strings: bool) -> list[tuple[str, Column, Column]]:
    """(rule, broken?, reason) per column rule; ``broken`` is a boolean Column that is never null."""
    rules: list[tuple[str, Column, Column]] = []
    for c in contract.columns:
        col = F.col(c.name)
        shown = col.cast("string")
        if typed_from_strings:
            raw = F.col(f"_raw_{c.name}")
            rules.append(
                (
                    f"type:{c.name}",
                    raw.isNotNull() & col.isNull(),
                    F.concat(F.lit(f"{c.name}='"), raw.substr(1, 200), F.lit(f"' is not a valid {c.type}")),
                )
            )
            null_cond = raw.isNull()
        else:
            null_cond = col.isNull()
        if not c.nullable:
            rules.append((f"not_null:{c.name}", null_cond, F.lit(f"{c.name} is null; a value is required")))
        if c.min is not None or c.max is not None:
            lo = col < F.lit(c.min) if c.min is not None else F.lit(False)
            hi = col > F.lit(c.max) if c.max is not None else F.lit(False)
            if c.min is not None and c.max is not None:
                bound = f" is outside [{_fmt(c.min)}, {_fmt(c.max)}]"
            elif c.min is not None:
                bound = f" is below the minimum {_fmt(c.min)}"
            else:
                bound = f" is above the maximum {_fmt(c.max)}"
            rules.append(
                (
                    f"range:{c.name}",
                    F.coalesce(lo | hi, F.lit(False)),
                    F.concat(F.lit(f"{c.name}="), shown, F.lit(bound)),
                )
            )
        if c.accepted_values:
            rules.append(
                (
                    f"accepted_values:{c.name}",
                    F.coalesce(~col.isin(c.accepted_values), F.lit(False)),
                    F.concat(F.lit(f"{c.name}='"), shown, F.lit(f"' is not one of {', '.join(c.accepted_values)}")),
                )
            )
        if c.max_length:
            rules.append(
                (
                    f"max_length:{c.name}",
                    F.coalesce(F.length(col) > c.max_length, F.lit(False)),
                    F.concat(
                        F.lit(f"{c.name} has "),
                        F.length(col).cast("string"),
                        F.lit(f" characters, at most {c.max_length} allowed"),
                    ),
                )
            )
        if c.pattern:
            rules.append(
                (
                    f"pattern:{c.name}",
                    F.coalesce(~col.rlike(c.pattern), F.lit(False)),
                    F.concat(F.lit(f"{c.name}='"), shown, F.lit(f"' does not match {c.pattern}")),
                )
            )
    for check in contract.row_checks:
        rules.append(
            (
                f"row_check:{check.name}",
                F.coalesce(~F.expr(check.sql), F.lit(False)),
                F.lit(f"violates {check.name}: {check.description or check.sql}"),
            )
        )
    return rules


def key_string(contract: Contract) -> Column:
    """A readable key, e.g. ``follower_id=1, followee_id=2``, for messages and the quarantine table."""
    parts = []
    for i, k in enumerate(contract.key):
        parts += ([F.lit(", ")] if i else []) + [F.lit(f"{k}="), F.coalesce(F.col(k).cast("string"), F.lit("null"))]
    return F.concat(*parts)


def with_violations(
    df: DataFrame,
    contract: Contract,
    *,
    references: Mapping[str, DataFrame],
    typed_from_strings: bool = False,
) -> DataFrame:
    """Add ``_rules`` and ``_reasons`` (arrays, empty for a good row) for every rule in the contract.

    ``references`` maps each referenced dataset to a DataFrame holding its existing keys (bronze plus anything
    ingested before). Duplicate keys within the file break ``duplicate_key`` on every copy: which one is right is
    not ours to guess, so all go to quarantine.
    """
    checks = _column_rules(contract, typed_from_strings)

    key_window = Window.partitionBy(*[F.col(k) for k in contract.key])
    dup_count = "_dup_count"
    out = df.withColumn(dup_count, F.count(F.lit(1)).over(key_window))
    checks.append(
        (
            "duplicate_key",
            F.col(dup_count) > 1,
            F.concat(
                F.lit("key ("),
                key_string(contract),
                F.lit(") appears "),
                F.col(dup_count).cast("string"),
                F.lit(" times in this file"),
            ),
        )
    )

    for i, ref in enumerate(contract.references):
        if ref.table not in references:
            raise KeyError(f"contract {contract.dataset} references {ref.table}, but no keys of it were given")
        flag = f"_ref_ok_{i}"
        keys = (
            references[ref.table]
            .select(*[F.col(t).alias(c) for c, t in zip(ref.columns, ref.to, strict=True)])
            .distinct()
            .withColumn(flag, F.lit(True))
        )
        out = out.join(keys, on=ref.columns, how="left")
        any_null = F.lit(False)
        for c in ref.columns:
            any_null = any_null | F.col(c).isNull()
        shown = F.concat_ws(", ", *[F.concat(F.lit(f"{c}="), F.col(c).cast("string")) for c in ref.columns])
        checks.append(
            (
                f"reference:{ref.table}",
                F.col(flag).isNull() & ~any_null,
                F.concat(shown, F.lit(f" not found in {ref.table}({', '.join(ref.to)})")),
            )
        )

    broken = F.array(
        *[F.when(cond, F.struct(F.lit(rule).alias("rule"), reason.alias("reason"))) for rule, cond, reason in checks]
    )
    out = out.withColumn("_broken", F.filter(broken, lambda x: x.isNotNull()))
    return out.select(
        *contract.column_names,
        *[c for c in df.columns if c.startswith("_raw_")],
        F.transform("_broken", lambda x: x["rule"]).alias(RULES_COL),
        F.transform("_broken", lambda x: x["reason"]).alias(REASONS_COL),
    )

"""The shape of a data contract file (``data_contracts/contracts/<dataset>.yml``).

The contract is the one place where an input's columns, types, key and rules are written. The core reads it for the
schemas in the table registry; ``data_contracts`` turns it into Spark row checks and great-expectations suites.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONTRACTS_DIR = Path(__file__).resolve().parents[1] / "data_contracts" / "contracts"

ColumnType = Literal["bigint", "int", "double", "string", "boolean", "timestamp", "date"]

_SPARK_TYPES = {
    "bigint": "LongType",
    "int": "IntegerType",
    "double": "DoubleType",
    "string": "StringType",
    "boolean": "BooleanType",
    "timestamp": "TimestampType",
    "date": "DateType",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: ColumnType
    nullable: bool = False
    description: str = ""
    min: float | None = None
    max: float | None = None
    accepted_values: list[str] | None = None
    max_length: int | None = Field(None, ge=1)
    pattern: str | None = None

    @model_validator(mode="after")
    def _rules_fit_type(self) -> Column:
        numeric = self.type in ("bigint", "int", "double")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"column {self.name}: min/max need a numeric type, not {self.type}")
        if (self.accepted_values or self.max_length or self.pattern) and self.type != "string":
            raise ValueError(f"column {self.name}: accepted_values/max_length/pattern need type string")
        if self.pattern:
            re.compile(self.pattern)
        return self


class Reference(_Strict):
    """Every row's ``columns`` must exist as ``to`` in dataset ``table`` (in bronze or in the same file)."""

    columns: list[str] = Field(min_length=1)
    table: str
    to: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_arity(self) -> Reference:
        if len(self.columns) != len(self.to):
            raise ValueError(f"reference {self.columns} -> {self.table}{self.to}: column counts differ")
        return self


class RowCheck(_Strict):
    """A row-level SQL predicate that every row must satisfy (null counts as satisfied)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    sql: str
    description: str = ""


class Contract(_Strict):
    dataset: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    layer: Literal["bronze", "oracle"] = "bronze"
    key: list[str] = Field(min_length=1)
    # The event-time column; event tables are partitioned by its date (a Delta generated column `dt`).
    event_time: str | None = None
    columns: list[Column] = Field(min_length=1)
    references: list[Reference] = Field(default_factory=list)
    row_checks: list[RowCheck] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_exist(self) -> Contract:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate column names in {names}")
        for k in (
            self.key + ([self.event_time] if self.event_time else []) + [c for r in self.references for c in r.columns]
        ):
            if k not in names:
                raise ValueError(f"{k!r} is used as key, event_time or reference but is not a column")
        for k in self.key:
            if self.column(k).nullable:
                raise ValueError(f"key column {k!r} must not be nullable")
        return self

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def spark_schema(self):
        from pyspark.sql import types as T

        return T.StructType(
            [T.StructField(c.name, getattr(T, _SPARK_TYPES[c.type])(), c.nullable) for c in self.columns]
        )


class ContractError(ValueError):
    pass


def contract_path(dataset: str) -> Path:
    return CONTRACTS_DIR / f"{dataset}.yml"


@cache
def load_contract(dataset: str) -> Contract:
    path = contract_path(dataset)
    if not path.exists():
        known = ", ".join(contract_names()) or "none"
        raise ContractError(f"no contract for dataset {dataset!r} (expected {path}); known datasets: {known}")
    try:
        contract = Contract.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as e:
        raise ContractError(f"contract {path} is invalid: {e}") from None
    if contract.dataset != dataset:
        raise ContractError(f"contract {path} names dataset {contract.dataset!r}, expected {dataset!r}")
    return contract


def contract_names() -> list[str]:
    return sorted(p.stem for p in CONTRACTS_DIR.glob("*.yml"))

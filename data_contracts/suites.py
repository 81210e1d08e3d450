"""Contracts as great-expectations suites, validated in a file-backed GX project whose data docs are the report.

Each expectation carries ``meta.rule`` with the name of the row rule it mirrors in ``checks``, so the report and the
quarantine table speak the same language. References across datasets are checked in Spark only (a GX batch sees one
dataset); the ingest summary reports them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame

from darkroom.contract_spec import Contract
from darkroom.settings import DarkroomSettings
from darkroom.spark import get_spark

log = logging.getLogger(__name__)


def expectation_suite(contract: Contract):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    exps: list = [
        gxe.ExpectTableColumnsToMatchSet(column_set=contract.column_names, exact_match=True, meta={"rule": "columns"})
    ]
    for c in contract.columns:
        if not c.nullable:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=c.name, meta={"rule": f"not_null:{c.name}"}))
        if c.min is not None or c.max is not None:
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c.name, min_value=c.min, max_value=c.max, meta={"rule": f"range:{c.name}"}
                )
            )
        if c.accepted_values:
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=c.name, value_set=c.accepted_values, meta={"rule": f"accepted_values:{c.name}"}
                )
            )
        if c.max_length:
            exps.append(
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column=c.name, max_value=c.max_length, meta={"rule": f"max_length:{c.name}"}
                )
            )
        if c.pattern:
            exps.append(
                gxe.ExpectColumnValuesToMatchRegex(column=c.name, regex=c.pattern, meta={"rule": f"pattern:{c.name}"})
            )
    if len(contract.key) == 1:
        exps.append(gxe.ExpectColumnValuesToBeUnique(column=contract.key[0], meta={"rule": "duplicate_key"}))
    else:
        exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=contract.key, meta={"rule": "duplicate_key"}))
    for check in contract.row_checks:
        exps.append(
            gxe.UnexpectedRowsExpectation(
                unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE NOT ({check.sql})",
                description=check.description or check.sql,
                meta={"rule": f"row_check:{check.name}"},
            )
        )
    return gx.ExpectationSuite(name=contract.dataset, expectations=exps, meta={"description": contract.description})


@dataclass(frozen=True)
class ExpectationOutcome:
    rule: str
    expectation: str
    success: bool
    unexpected_count: int | None


@dataclass(frozen=True)
class ValidationReport:
    dataset: str
    success: bool
    outcomes: list[ExpectationOutcome]
    docs_index: Path

    def failed_rules(self) -> dict[str, int | None]:
        return {o.rule: o.unexpected_count for o in self.outcomes if not o.success}


class ContractValidator:
    """Validates DataFrames against contract suites in the GX project under ``<reports>/great_expectations``, whose
    data docs site is the HTML report."""

    def __init__(self, settings: DarkroomSettings):
        # Our session (with the Delta jars) must exist before GX would start a plain one of its own.
        get_spark(settings, "validate")
        logging.getLogger("great_expectations").setLevel(logging.ERROR)  # before import: its registry is chatty
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        project_dir = settings.reports_dir / "great_expectations"
        project_dir.mkdir(parents=True, exist_ok=True)
        self._gx = gx
        self._context = gx.get_context(mode="file", project_root_dir=str(project_dir))
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = self._context.data_sources.add_or_update_spark(name="darkroom")

    def validate(self, contract: Contract, df: DataFrame, *, run_name: str) -> ValidationReport:
        gx = self._gx
        ctx = self._context
        name = contract.dataset
        try:
            asset = self._source.get_asset(name)
        except LookupError:
            asset = self._source.add_dataframe_asset(name=name)
        try:
            batch_def = asset.get_batch_definition("whole")
        except KeyError:
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add_or_update(expectation_suite(contract))
        vdef = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[vdef],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
                result_format={"result_format": "SUMMARY"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=gx.RunIdentifier(run_name=run_name))
        outcomes = []
        for vr in result.run_results.values():
            for er in vr.results:
                cfg = er.expectation_config
                outcomes.append(
                    ExpectationOutcome(
                        rule=(cfg.meta or {}).get("rule", cfg.type),
                        expectation=cfg.type,
                        success=bool(er.success),
                        unexpected_count=er.result.get("unexpected_count"),
                    )
                )
        return ValidationReport(
            dataset=name, success=bool(result.success), outcomes=outcomes, docs_index=self.docs_index()
        )

    def docs_index(self) -> Path:
        for site in self._context.get_docs_sites_urls():
            url = site.get("site_url") or ""
            if url.startswith("file://"):
                return Path(url.removeprefix("file://"))
        raise RuntimeError("the GX project has no local data docs site")

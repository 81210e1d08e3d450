"""``ingest``: one landing file (or folder of part files) through its data contract into bronze Delta.

    darkroom ingest --dataset follows --path landing/follows [--format parquet|csv|json]

Steps: skip if the ledger already holds the file's checksum; read and conform (file-level errors refuse the file and
write nothing); check every row rule; refuse the file if more than ``ingest.max_bad_fraction`` of rows are bad;
validate with great-expectations (data docs report); then write, each step idempotent: quarantine rows
(``replaceWhere`` on the file's checksum), MERGE good rows into bronze on the key, MERGE the ledger row last. A run
killed between writes leaves no ledger row, so the re-run redoes all three and ends in the same state.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from darkroom import lake
from darkroom.contract_spec import load_contract
from darkroom.settings import DarkroomSettings
from darkroom.spark import get_spark
from darkroom.tables import dataset_table, input_datasets, table
from data_contracts.checks import FileContractError, conform, with_violations
from jobs.ingest.transform import good_rows, quarantine_rows, rule_counts

log = logging.getLogger(__name__)

Format = Literal["parquet", "csv", "json"]
APP_NAME = "ingest"


@dataclass
class IngestResult:
    dataset: str
    source: str
    checksum: str
    status: Literal["ingested", "skipped"]
    rows: int = 0
    good_rows: int = 0
    quarantined_rows: int = 0
    quarantined_by_rule: dict[str, int] = field(default_factory=dict)
    target: str = ""
    target_version: int | None = None
    report: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        if self.status == "skipped":
            return f"{self.dataset}: {self.source} already ingested (checksum {self.checksum[:12]}): no change"
        rate = self.rows / self.seconds if self.seconds else 0
        q = f", quarantined {self.quarantined_rows:,}" + (
            f" ({', '.join(f'{r}: {n:,}' for r, n in sorted(self.quarantined_by_rule.items()))})"
            if self.quarantined_by_rule
            else ""
        )
        return (
            f"{self.dataset}: {self.rows:,} rows -> {self.target} v{self.target_version}: "
            f"{self.good_rows:,} good{q} in {self.seconds:.1f}s ({rate:,.0f} rows/s)"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def data_files(path: Path) -> list[Path]:
    """The files that make up a dataset: the file itself, or every data file under a folder (no _SUCCESS, .crc)."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileContractError(str(path), "does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
    if not files:
        raise FileContractError(str(path), "is an empty folder: no data files")
    return files


def checksum(path: Path) -> str:
    """SHA-256 over the sorted SHA-256s of the data files: the identity of a landing file in the ledger.

    File names do not count, so the same rows written again by Spark (new part-file names) are recognised.
    """
    digests = []
    for f in data_files(path):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def detect_format(path: Path) -> Format:
    names = [f.name for f in data_files(path)]
    for fmt, exts in (("parquet", (".parquet",)), ("csv", (".csv",)), ("json", (".json", ".jsonl"))):
        if all(n.endswith(exts) for n in names):
            return fmt  # type: ignore[return-value]
    raise FileContractError(str(path), f"cannot tell the format from file names {names[:3]}; pass --format")


def _read(spark, path: Path, fmt: Format, source: str):
    try:
        if fmt == "parquet":
            df = spark.read.parquet(str(path))
        elif fmt == "csv":
            df = (
                spark.read.option("header", True)
                .option("inferSchema", False)
                .option("mode", "PERMISSIVE")
                .csv(str(path))
            )
        else:
            df = spark.read.option("primitivesAsString", True).option("mode", "PERMISSIVE").json(str(path))
        df.limit(1).collect()  # surfaces unreadable files now, as a file-level error
        return df
    except Exception as e:  # noqa: BLE001 - Spark raises many kinds for a corrupt file
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if "TIMESTAMP(NANOS" in first:
            first += " (nanosecond timestamps: write microseconds, e.g. pandas to_parquet(coerce_timestamps='us'))"
        raise FileContractError(source, f"unreadable as {fmt}: {first}") from None


def _ledger_has(spark, settings: DarkroomSettings, dataset: str, digest: str) -> bool:
    from pyspark.sql import functions as F

    ledger = table("meta.ingest_ledger")
    if not lake.exists(spark, ledger, settings):
        return False
    hits = (
        lake.read(spark, ledger, settings)
        .where((F.col("dataset") == dataset) & (F.col("source_checksum") == digest))
        .limit(1)
        .count()
    )
    return hits > 0


def ingest(
    settings: DarkroomSettings,
    dataset: str,
    path: Path,
    fmt: Format | None = None,
    *,
    run_id: str | None = None,
    validator=None,
) -> IngestResult:
    """Ingest one landing file or folder; raises FileContractError (nothing written) when the file is refused."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.monotonic()
    contract = load_contract(dataset)
    path = Path(path).resolve()
    source = str(path)
    fmt = fmt or detect_format(path)
    digest = checksum(path)
    spark = get_spark(settings, APP_NAME)
    target = dataset_table(dataset)
    run_id = run_id or f"manual__{uuid.uuid4().hex[:12]}"

    if _ledger_has(spark, settings, dataset, digest):
        return IngestResult(
            dataset, source, digest, "skipped", target=target.qualified_name, seconds=time.monotonic() - started
        )

    raw = _read(spark, path, fmt, source)
    malformed = "_corrupt_record" in raw.columns
    if malformed:
        raw = raw.drop("_corrupt_record")
    typed = conform(raw, contract, source=source, all_strings=fmt != "parquet")

    references = {}
    for ref in contract.references:
        ref_table = dataset_table(ref.table)
        if not lake.exists(spark, ref_table, settings):
            raise FileContractError(
                source,
                f"{dataset} references {ref.table}, but {ref_table.qualified_name} "
                f"does not exist yet: ingest {ref.table} first",
            )
        references[ref.table] = lake.read(spark, ref_table, settings)

    checked = with_violations(typed, contract, references=references, typed_from_strings=fmt != "parquet")
    checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        totals = checked.agg(
            F.count(F.lit(1)).alias("rows"), F.sum((F.size("_rules") > 0).cast("long")).alias("bad")
        ).collect()[0]
        rows, bad = int(totals["rows"]), int(totals["bad"] or 0)
        by_rule = {r["rule"]: int(r["rows"]) for r in rule_counts(checked).collect()}

        report = None
        if validator is not None:
            report = validator.validate(contract, typed.select(*contract.column_names), run_name=f"{dataset}-{run_id}")

        limit = settings.ingest.max_bad_fraction
        if rows and bad / rows > limit:
            worst = ", ".join(f"{r}: {n:,}" for r, n in sorted(by_rule.items(), key=lambda kv: -kv[1])[:5])
            where = f"; report: {report.docs_index}" if report else ""
            raise FileContractError(
                source,
                f"{bad:,} of {rows:,} rows ({bad / rows:.1%}) break the {dataset} "
                f"contract, more than ingest.max_bad_fraction={limit:.1%} "
                f"({worst}); nothing was written{where}",
            )

        now = datetime.now(UTC)
        quarantine = table(f"quarantine.{dataset}")
        lake.ensure_table(spark, quarantine, settings)
        (
            quarantine_rows(
                checked, contract, source_file=source, source_checksum=digest, run_id=run_id, quarantined_at=now
            )
            .write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", f"source_checksum = '{digest}'")
            .save(quarantine.uri(settings))
        )
        version = lake.merge_on_key(spark, target, settings, good_rows(checked, contract))
    finally:
        checked.unpersist()

    result = IngestResult(
        dataset,
        source,
        digest,
        "ingested",
        rows=rows,
        good_rows=rows - bad,
        quarantined_rows=bad,
        quarantined_by_rule=by_rule,
        target=target.qualified_name,
        target_version=version,
        report=str(report.docs_index) if report else None,
        seconds=time.monotonic() - started,
    )
    _record(spark, settings, result, fmt, run_id, now)
    return result


def _record(spark, settings: DarkroomSettings, r: IngestResult, fmt: str, run_id: str, at: datetime) -> None:
    ledger = table("meta.ingest_ledger")
    row = spark.createDataFrame(
        [
            (
                r.dataset,
                r.checksum,
                r.source,
                fmt,
                r.rows,
                r.good_rows,
                r.quarantined_rows,
                r.target_version,
                run_id,
                at,
                r.report,
            )
        ],
        schema=ledger.schema,
    )
    lake.merge_on_key(spark, ledger, settings, row)


def landing_path(settings: DarkroomSettings, dataset: str, landing_dir: Path | str | None = None) -> Path:
    """Where a dataset's landing data is: ``<landing_dir>/<dataset>``, else the registry's landing path."""
    return Path(landing_dir) / dataset if landing_dir else table(f"landing.{dataset}").path(settings)


def ingest_landing(
    settings: DarkroomSettings,
    landing_dir: Path | None = None,
    datasets: list[str] | None = None,
    *,
    run_id: str | None = None,
    with_report: bool = True,
    echo=print,
) -> list[IngestResult]:
    """Ingest every dataset found in a landing folder (``<dir>/<dataset>``), referenced datasets first."""
    from data_contracts.suites import ContractValidator

    validator = ContractValidator(settings) if with_report else None
    results = []
    order = [d for d in input_datasets() if datasets is None or d in datasets]
    for i, name in enumerate(order, 1):
        path = landing_path(settings, name, landing_dir)
        if not path.exists():
            echo(f"[ingest {i}/{len(order)}] {name}: no landing data at {path}, skipped")
            continue
        r = ingest(settings, name, path, run_id=run_id, validator=validator)
        echo(f"[ingest {i}/{len(order)}] {r.line()}")
        results.append(r)
    return results


def ingest_dataset(settings: DarkroomSettings, *, as_of: datetime, dataset: str, params: dict, run_id: str) -> dict:
    """The ``ingest`` DAG's task for one dataset (entry point, ``darkroom.spark_task``): the dataset's landing data
    (``params["landing_dir"]``) checked and merged into bronze, GX docs updated; skipped (``TaskSkipped``) when the
    dataset is not in ``params["datasets"]``, has no landing data, or its files are all in the ledger already."""
    from darkroom.spark_task import TaskSkipped
    from data_contracts.suites import ContractValidator

    path = _selected_landing(settings, dataset, params)
    result = ingest(settings, dataset, path, run_id=run_id, validator=ContractValidator(settings))
    if result.status == "skipped":
        raise TaskSkipped(result.line())
    print(result.line(), flush=True)
    return result.as_dict()


def ingest_precheck(settings: DarkroomSettings, *, as_of: datetime, dataset: str, params: dict, run_id: str) -> None:
    """``ingest_dataset``'s skips, decided without Spark (the task's pre-check, ``darkroom.spark_task``): raises
    ``TaskSkipped`` when the dataset is not selected, has no landing data, or the ledger already holds its checksum,
    so a submitted task starts no driver JVM for an hour with nothing new. The ledger is read with delta-rs when it
    is a local table; on an object store, or when delta-rs cannot read it, the driver's own check decides."""
    from darkroom.spark_task import TaskSkipped

    path = _selected_landing(settings, dataset, params)
    digest = checksum(path)
    if _ledger_has_local(settings, dataset, digest):
        raise TaskSkipped(IngestResult(dataset, str(path.resolve()), digest, "skipped").line())


def _selected_landing(settings: DarkroomSettings, dataset: str, params: dict) -> Path:
    """The dataset's landing path, or ``TaskSkipped`` when it is not in ``params["datasets"]`` or has no data."""
    from darkroom.spark_task import TaskSkipped

    if dataset not in params["datasets"]:
        raise TaskSkipped(f"{dataset}: not in params.datasets {params['datasets']}")
    path = landing_path(settings, dataset, params["landing_dir"])
    if not path.exists():
        raise TaskSkipped(f"{dataset}: no landing data at {path}")
    return path


def _ledger_has_local(settings: DarkroomSettings, dataset: str, digest: str) -> bool:
    """Whether ``meta.ingest_ledger`` holds ``(dataset, digest)``, read with delta-rs; False when the ledger is not
    a local table, does not exist yet, or uses a protocol delta-rs cannot read (then Spark's check decides)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaProtocolError, TableNotFoundError

    ledger = table("meta.ingest_ledger")
    uri = ledger.uri(settings)
    if "://" in uri:
        return False
    try:
        hits = DeltaTable(uri).to_pyarrow_table(
            columns=["source_checksum"], filters=[("dataset", "=", dataset), ("source_checksum", "=", digest)]
        )
    except (TableNotFoundError, DeltaProtocolError) as e:
        log.info("ingest pre-check: %s not read with delta-rs (%s); the driver checks the ledger", uri, e)
        return False
    return hits.num_rows > 0

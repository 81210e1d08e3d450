"""Resolve the Delta Lake jars once, at set-up, into ``<state>/jars``; every Spark session then loads them from disk.

``python -m darkroom.jars`` uses Spark's own Ivy resolution against Maven Central and falls back to
``mvn dependency:copy-dependencies`` on a small generated pom. Re-running is a no-op once the manifest matches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path


def delta_coordinates() -> list[str]:
    """The Maven coordinates delta-spark's Python package is built for (the same rule as its pip_utils)."""
    import pyspark

    spark_mm = ".".join(pyspark.__version__.split(".")[:2])
    delta = version("delta_spark")
    return [f"io.delta:delta-spark_{spark_mm}_2.13:{delta}"]


def manifest_path(jars_dir: Path) -> Path:
    return jars_dir / "MANIFEST.json"


def resolved_jars(jars_dir: Path) -> list[Path]:
    """The jar files recorded by the last successful resolution; raise if set-up has not run or is incomplete."""
    mf = manifest_path(jars_dir)
    if not mf.exists():
        raise FileNotFoundError(
            f"Delta jars are not resolved in {jars_dir}: run `make setup` (or `python -m darkroom.jars`) once"
        )
    data = json.loads(mf.read_text())
    jars = [jars_dir / j for j in data["jars"]]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise FileNotFoundError(f"Delta jars listed in {mf} are missing: {missing}; run `make setup` again")
    return jars


def _up_to_date(jars_dir: Path, coords: list[str]) -> bool:
    try:
        resolved_jars(jars_dir)
        return json.loads(manifest_path(jars_dir).read_text())["coordinates"] == coords
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return False


def _resolve_with_ivy(coords: list[str], work: Path) -> list[Path]:
    """Spark's launcher resolves --packages with Ivy; a throwaway session is the simplest way to run it."""
    script = work / "noop.py"
    script.write_text("")
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cmd = [
        str(spark_submit),
        "--master",
        "local[1]",
        "--packages",
        ",".join(coords),
        "--conf",
        f"spark.jars.ivy={work / 'ivy'}",
        str(script),
    ]
    env = {**os.environ, "SPARK_HOME": _spark_home()}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900, env=env)
    # Ivy names files <group>_<artifact>-<version>.jar
    return _not_in_spark(sorted((work / "ivy" / "jars").glob("*.jar")), lambda n: n.split("_", 1)[1])


def _resolve_with_maven(coords: list[str], work: Path) -> list[Path]:
    deps = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in (c.split(":") for c in coords)
    )
    (work / "pom.xml").write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>darkroom</groupId><artifactId>delta-jars</artifactId><version>0</version>"
        f"<dependencies>{deps}</dependencies></project>"
    )
    out = work / "mvn-jars"
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={out}",
        ],
        check=True,
        timeout=900,
    )
    return _not_in_spark(sorted(out.glob("*.jar")), lambda n: n)


def _artifact(file_name: str) -> str:
    return file_name.rsplit("-", 1)[0]


def _not_in_spark(jars: list[Path], strip) -> list[Path]:
    """Spark already ships Hadoop, Jackson, Parquet, logging...: keep only the jars Delta adds, so no second copy
    of a class Spark has can end up on the classpath."""
    spark_artifacts = {_artifact(p.name) for p in _spark_jars_dir().glob("*.jar")}
    return [p for p in jars if _artifact(strip(p.name)) not in spark_artifacts]


def _spark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


def _spark_jars_dir() -> Path:
    return Path(_spark_home()) / "jars"


def ensure_delta_jars(jars_dir: Path) -> list[Path]:
    coords = delta_coordinates()
    if _up_to_date(jars_dir, coords):
        print(f"[jars] Delta jars up to date in {jars_dir}")
        return resolved_jars(jars_dir)
    jars_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="darkroom-jars-") as tmp:
        work = Path(tmp)
        print(f"[jars] resolving {', '.join(coords)} from Maven Central (once)")
        try:
            found = _resolve_with_ivy(coords, work)
        except (subprocess.SubprocessError, OSError) as e:
            detail = getattr(e, "stderr", b"") or b""
            print(f"[jars] Ivy resolution failed ({e}; {detail.decode(errors='replace')[-300:]}); trying Maven")
            found = _resolve_with_maven(coords, work)
        if not any("delta-spark" in p.name for p in found):
            raise RuntimeError(f"resolution of {coords} returned no delta-spark jar: {[p.name for p in found]}")
        for old in jars_dir.glob("*.jar"):
            old.unlink()
        for p in found:
            shutil.copy2(p, jars_dir / p.name)
    manifest_path(jars_dir).write_text(
        json.dumps({"coordinates": coords, "jars": [p.name for p in found]}, indent=2) + "\n"
    )
    print(f"[jars] {len(found)} jars in {jars_dir}: {', '.join(p.name for p in found)}")
    return resolved_jars(jars_dir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    ensure_delta_jars(args.state_dir.resolve() / "jars")


if __name__ == "__main__":
    main()

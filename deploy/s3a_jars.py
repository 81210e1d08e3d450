"""Image build only: ``hadoop-aws`` for the Hadoop version Spark ships, and what it needs (the AWS SDK v2 bundle, ...),
into Spark's own jars folder, so every Spark JVM of the image (driver, master, workers) can read an ``s3a://`` lake.

Resolved with ``darkroom.jars``' Ivy resolution, the code ``make setup`` runs for the Delta jars. Local set-up does not
run this: the embedded lake is a local folder, and the SDK bundle alone is about 700 MB.

    PYTHONPATH=. python deploy/s3a_jars.py [--jars-dir DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from darkroom.jars import _resolve_with_ivy, _spark_jars_dir

_HADOOP_CLIENT = re.compile(r"hadoop-client-api-(\d[\w.-]*)\.jar")


def hadoop_version(spark_jars: Path) -> str:
    """The version of the Hadoop client Spark ships (``hadoop-client-api-<version>.jar``): hadoop-aws must match it."""
    found = sorted({m.group(1) for p in spark_jars.glob("*.jar") if (m := _HADOOP_CLIENT.fullmatch(p.name))})
    if len(found) != 1:
        raise RuntimeError(f"expected one hadoop-client-api jar in {spark_jars}, found versions {found}")
    return found[0]


def hadoop_aws_coordinates(spark_jars: Path) -> list[str]:
    return [f"org.apache.hadoop:hadoop-aws:{hadoop_version(spark_jars)}"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jars-dir", type=Path, default=None, help="copy the jars here (default: Spark's jars folder)")
    args = ap.parse_args(argv)
    spark_jars = _spark_jars_dir()
    target = args.jars_dir or spark_jars
    coords = hadoop_aws_coordinates(spark_jars)
    print(f"[s3a] resolving {', '.join(coords)} and its dependencies from Maven Central")
    with tempfile.TemporaryDirectory(prefix="darkroom-s3a-") as tmp:
        found = _resolve_with_ivy(coords, Path(tmp))
        names = [p.name for p in found]
        if not any("hadoop-aws" in n for n in names) or not any("awssdk_bundle" in n for n in names):
            raise RuntimeError(f"resolution of {coords} gave {names}: no hadoop-aws or AWS SDK bundle jar")
        target.mkdir(parents=True, exist_ok=True)
        for p in found:
            shutil.copy2(p, target / p.name)
    print(f"[s3a] {len(found)} jars in {target}: {', '.join(names)}")


if __name__ == "__main__":
    main()

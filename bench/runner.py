"""Runs one benchmark module (``bench/<name>.py`` with ``run(settings, quick) -> dict``) and writes
``bench/results/<name>.json``: ratio and ratio_of first, then the raw figures, the parameters and the machine."""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from darkroom.settings import DarkroomSettings

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[:1]
    import pyspark

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "java": java[0] if java else "",
        "spark": pyspark.__version__,
    }


def run_benchmark(name: str, settings: DarkroomSettings, *, quick: bool) -> Path:
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError:
        known = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in ("__init__", "runner"))
        raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(known)}") from None
    started = datetime.now(UTC)
    result = module.run(settings, quick=quick)
    if "ratio" not in result or "ratio_of" not in result:
        raise RuntimeError(f"benchmark {name} returned no ratio/ratio_of")
    out = {
        "name": name,
        "ratio": result.pop("ratio"),
        "ratio_of": result.pop("ratio_of"),
        **result,
        "quick": quick,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path

"""The platform end to end over two days, then the second day run again, as a backfill or a retry would: every check
of ``test_platform.py`` on that world, and every Delta table's rows, every blob file and every Redis key must be
exactly as the first run left them.

Heavy (about 17 min of both cores: 20 DAG runs, the 6-run re-run, the digests): ``make test-heavy``.
"""

from __future__ import annotations

import json

import pytest

from darkroom.platform_run import DAILY
from tests.e2e.conftest import build_platform
from tests.e2e.test_platform import *  # noqa: F403 (the suite's checks, collected again on this module's world)

pytestmark = [pytest.mark.integration, pytest.mark.heavy]


@pytest.fixture(scope="module")
def platform(settings, spark, tmp_path_factory):
    yield from build_platform(settings, spark, tmp_path_factory, days=2, rerun=True)


def test_rerunning_the_last_day_changes_no_table_file_or_key(platform):
    rerun = platform["rerun"]
    assert {r.dag_id for r in rerun} == {"dbt_build", *DAILY, "feed_publish"}
    assert all(o.state == "success" for o in platform["rerun_outcomes"])
    first, second = platform["first"], platform["second"]
    assert first["files"], "no blob files"
    changed = {k: (first["delta"].get(k), v) for k, v in second["delta"].items() if first["delta"].get(k) != v}
    assert not changed, f"Delta tables whose rows changed on the re-run: {json.dumps(changed)}"
    assert second["files"] == first["files"]
    assert second["redis"] == first["redis"]

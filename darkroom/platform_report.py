"""What a plan of DAG runs left behind, as one report: ``report.json`` and ``report.html`` with PNG plots.

Every figure is read back from where the platform keeps it, not from the driver's memory: task return values from
Airflow's metadata DB, the blob store's catalog and files, MLflow's tracking store and registry, the Redis the feeds
were published to, and the per-job reports the DAGs wrote (tiering, fan-out), which the HTML links to.
"""

from __future__ import annotations

import html
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from darkroom.airflow_env import airflow_db_path
from darkroom.platform_run import RunOutcome
from darkroom.settings import DarkroomSettings


def run_xcom(settings: DarkroomSettings, dag_id: str, run_id: str, task_id: str) -> Any:
    """What ``task_id`` returned in run ``run_id`` of ``dag_id`` (None when it returned nothing or was skipped)."""
    with sqlite3.connect(airflow_db_path(settings)) as db:
        rows = db.execute(
            "SELECT x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id WHERE x.dag_id = ? AND r.run_id = ? "
            "AND x.task_id = ? AND x.key = 'return_value'",
            (dag_id, run_id, task_id),
        ).fetchall()
    if not rows:
        return None
    value = rows[0][0]
    if isinstance(value, bytes | str):
        return json.loads(value.decode() if isinstance(value, bytes) else value)
    return value  # SQLite hands a JSON scalar back as a number


def _runs(outcomes: Iterable[RunOutcome], dag_id: str) -> list[RunOutcome]:
    return [o for o in outcomes if o.dag_id == dag_id and o.state == "success"]


def _storage(settings: DarkroomSettings, outcomes: list[RunOutcome]) -> dict:
    from blobstore.maintenance import tier_report
    from blobstore.store import BlobStore

    days = []
    for o in _runs(outcomes, "storage_tiering"):
        plan = run_xcom(settings, o.dag_id, o.run_id, "tiering_plan") or {}
        days.append(
            {
                "as_of": o.logical_date,
                "plan": {k: plan.get(k) for k in ("plan_date", "media", "transitions", "before", "after") if k in plan},
                "ec_rewrite": run_xcom(settings, o.dag_id, o.run_id, "ec_rewrite"),
                "cold_archive": run_xcom(settings, o.dag_id, o.run_id, "cold_archive"),
                "compaction": run_xcom(settings, o.dag_id, o.run_id, "compaction"),
                "fsck_differences": run_xcom(settings, o.dag_id, o.run_id, "blob_fsck"),
            }
        )
    scrubs = [
        {"as_of": o.logical_date, "scrub": run_xcom(settings, o.dag_id, o.run_id, "blob_scrub")}
        for o in _runs(outcomes, "blob_scrub")
    ]
    reports = sorted(str(p) for p in (settings.reports_dir / "tiering").glob("*/report.html"))
    return {"days": days, "scrubs": scrubs, "tiers_now": tier_report(BlobStore(settings)), "reports": reports}


def _fanout(settings: DarkroomSettings, outcomes: list[RunOutcome]) -> dict:
    days = []
    for o in _runs(outcomes, "fanout_threshold_tuning"):
        tuned = run_xcom(settings, o.dag_id, o.run_id, "fanout_threshold") or {}
        figures_file = settings.reports_dir / "fanout" / str(tuned.get("version")) / "figures.json"
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
        policies = figures.get("policies", {})
        chosen = policies.get("threshold", {})
        push = policies.get("pure_push", {})
        days.append(
            {
                "as_of": o.logical_date,
                "version": tuned.get("version"),
                "threshold": tuned.get("threshold"),
                "budgets": figures.get("message"),
                "total_cost": {name: p.get("total_cost") for name, p in policies.items()},
                "saved_vs_pure_push_writes": (
                    round(1 - chosen["writes"] / push["writes"], 4) if push.get("writes") and chosen else None
                ),
                # replay_validation is spark-submitted (no XCom): its errors are in replay.json beside the report
                "replay_errors": _replay_errors(figures_file.with_name("replay.json")),
                "report": str(figures_file.with_name("report.html")) if figures_file.exists() else None,
            }
        )
    return {"days": days}


def _replay_errors(path: Path) -> dict | None:
    """Per replayed policy, the relative error of each figure against the model (``replay.json`` of a tuning)."""
    return {name: r["error"] for name, r in json.loads(path.read_text()).items()} if path.exists() else None


def _models(settings: DarkroomSettings, outcomes: list[RunOutcome]) -> dict:
    from mlflow import MlflowClient

    from darkroom.tracking import tracking_uri

    client = MlflowClient(tracking_uri(settings), registry_uri=tracking_uri(settings))
    out: dict[str, Any] = {"tracking_uri": tracking_uri(settings), "experiments": {}, "registry": {}}
    for name in (settings.ranker.experiment, settings.two_tower.experiment, settings.fanout.experiment):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=200)
        out["experiments"][name] = [
            {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "metrics": {k: round(v, 6) for k, v in sorted(r.data.metrics.items())},
                "decision": r.data.tags.get("decision") or r.data.tags.get("promotion"),
            }
            for r in runs
        ]
    for model in (settings.ranker.registered_model, settings.two_tower.registered_model):
        try:
            registered = client.get_registered_model(model)
        except Exception:  # noqa: BLE001 - a model never registered is reported as absent
            continue
        versions = client.search_model_versions(f"name = '{model}'")
        out["registry"][model] = {
            "aliases": dict(registered.aliases),
            "versions": sorted(
                ({"version": v.version, "run_id": v.run_id, "tags": dict(v.tags)} for v in versions),
                key=lambda v: int(v["version"]),
            ),
        }
    out["runs"] = {
        dag: [
            {"as_of": o.logical_date, "result": run_xcom(settings, dag, o.run_id, task)} for o in _runs(outcomes, dag)
        ]
        for dag, task in (("ranker_weekly", "retrain"), ("ranker_hourly", "finetune"), ("two_tower_weekly", "train"))
    }
    return out


def _feeds(settings: DarkroomSettings, outcomes: list[RunOutcome], redis_url: str | None) -> dict:
    published = [
        {"as_of": o.logical_date, "results": run_xcom(settings, o.dag_id, o.run_id, "publish") or []}
        for o in _runs(outcomes, "feed_publish")
    ]
    explore = [
        {"as_of": o.logical_date, "results": run_xcom(settings, o.dag_id, o.run_id, "publish_explore") or []}
        for o in _runs(outcomes, "two_tower_weekly")
    ]
    out: dict[str, Any] = {"published": published, "explore": explore, "redis_url": redis_url}
    if redis_url:
        out["sample_read"] = sample_feed_read(settings, redis_url)
    return out


def sample_feed_read(settings: DarkroomSettings, redis_url: str, limit: int = 10) -> dict:
    """The current feed version and one user's first page, read as the online feed does (``FeedReader``): the user
    with the most timeline entries in the current version."""
    import redis

    from serving.keys import KeySpace
    from serving.readers import FeedReader, ReaderConfig

    client = redis.Redis.from_url(redis_url)
    try:
        keys = KeySpace(settings.serving.key_prefix)
        raw = client.get(keys.pointer("feed"))
        if raw is None:
            return {"version": None}
        version = raw.decode()
        best, best_n = None, -1
        for key in client.scan_iter(match=keys.data("feed", version, "timeline:*"), count=1000):
            n = client.zcard(key)
            if n > best_n:
                best, best_n = key.decode(), n
        if best is None:
            return {"version": version, "user": None}
        user = int(best.rsplit("{", 1)[1].rstrip("}"))  # timeline:{<user_id>}
        page = FeedReader(client, ReaderConfig.from_settings(settings.serving)).get_feed(user, limit=limit)
        return {
            "version": version,
            "user": user,
            "timeline_key": best,
            "timeline_entries": best_n,
            "page": [{"post_id": p.post_id, "score": p.score, "source": p.source} for p in page.posts],
            "has_more": page.has_more,
        }
    finally:
        client.close()


def build_report(
    settings: DarkroomSettings,
    outcomes: list[RunOutcome],
    *,
    redis_url: str | None = None,
    extra: dict | None = None,
) -> dict:
    return {
        "state_dir": str(settings.state_dir),
        "runs": [o.__dict__ for o in outcomes],
        "storage": _storage(settings, outcomes),
        "fanout": _fanout(settings, outcomes),
        "models": _models(settings, outcomes),
        "feeds": _feeds(settings, outcomes, redis_url),
        "ui": {
            "airflow": ".venv/bin/darkroom airflow up   (then open the printed URL; `darkroom airflow down` stops it)",
            "mlflow": f".venv/bin/{_mlflow_ui(settings)}",
            "dbt_docs": ".venv/bin/darkroom dbt docs",
        },
        **(extra or {}),
    }


def _mlflow_ui(settings: DarkroomSettings) -> str:
    from darkroom.tracking import ui_command

    return ui_command(settings)


# --- HTML and plots ---------------------------------------------------------------------------------------------------
def _plots(report: dict, out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []

    runs = report["runs"]
    if runs:
        fig, ax = plt.subplots(figsize=(9, max(3, 0.22 * len(runs))))
        labels = [f"{r['dag_id']} {r['logical_date'][5:16]}" for r in runs]
        colors = ["tab:green" if r["state"] == "success" else "tab:red" for r in runs]
        ax.barh(range(len(runs)), [r["seconds"] for r in runs], color=colors)
        ax.set_yticks(range(len(runs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title("DAG runs in logical-time order")
        fig.tight_layout()
        fig.savefig(out / "runs.png", dpi=90)
        plt.close(fig)
        made.append(("runs.png", "Every DAG run of the plan, in order, and how long it took"))

    tiers = report["storage"]["tiers_now"]["tiers"]
    if any(t["bytes"] for t in tiers.values()):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
        names = list(tiers)
        a1.bar(names, [tiers[n]["bytes"] / 2**30 for n in names], label="logical")
        a1.bar(names, [tiers[n]["raw_bytes"] / 2**30 for n in names], alpha=0.4, label="on disk")
        a1.set_ylabel("GiB")
        a1.set_title("bytes per tier (blob store, now)")
        a1.legend()
        a2.bar(names, [tiers[n]["replication"] or 0 for n in names], color="tab:purple")
        a2.axhline(2.1, ls="--", color="grey")
        a2.set_title("measured replication (warm goal 2.1x)")
        fig.tight_layout()
        fig.savefig(out / "tiers.png", dpi=90)
        plt.close(fig)
        made.append(("tiers.png", "Tier distribution and effective replication, measured from the files"))

    fan = report["fanout"]["days"]
    if fan:
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.plot([d["as_of"][:10] for d in fan], [d["threshold"] for d in fan], marker="o")
        ax.set_ylabel("follower threshold T*")
        ax.set_title("fan-out policy per day (push below T*, pull above)")
        fig.tight_layout()
        fig.savefig(out / "fanout.png", dpi=90)
        plt.close(fig)
        made.append(("fanout.png", "The tuned follower threshold, day by day"))

    ranker_runs = report["models"]["experiments"].get("ranker", [])
    metric = next((m for r in ranker_runs for m in r["metrics"] if "auc" in m and "holdout" in m), None)
    metric = metric or next((m for r in ranker_runs for m in r["metrics"] if "auc" in m), None)
    if metric:
        fig, ax = plt.subplots(figsize=(9, 3))
        xs = [r["run_name"] or r["run_id"][:8] for r in ranker_runs if metric in r["metrics"]]
        ax.plot(xs, [r["metrics"][metric] for r in ranker_runs if metric in r["metrics"]], marker="o")
        ax.set_title(f"ranker runs: {metric}")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "ranker.png", dpi=90)
        plt.close(fig)
        made.append(("ranker.png", f"Every ranker run of the plan (weekly retrain, hourly fine-tunes): {metric}"))
    return made


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _pre(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=1, default=str))}</pre>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(report: dict, out: Path) -> Path:
    """``report.json`` and ``report.html`` (with its PNGs) in ``out``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    images = _plots(report, out)
    parts = [f"<h1>darkroom: {html.escape(report.get('title', 'platform run'))}</h1>"]
    if report.get("summary"):
        parts.append(_pre(report["summary"]))
    parts += [f'<figure><img src="{f}"><figcaption>{html.escape(c)}</figcaption></figure>' for f, c in images]
    parts.append(
        _section(
            "DAG runs",
            _table(
                ["DAG", "logical date", "state", "seconds", "tasks"],
                [[r["dag_id"], r["logical_date"], r["state"], r["seconds"], len(r["tasks"])] for r in report["runs"]],
            ),
        )
    )
    st = report["storage"]
    storage_rows = [
        [
            d["as_of"][:10],
            (d["ec_rewrite"] or {}).get("volumes", (d["ec_rewrite"] or {}).get("new_volumes", "-")),
            json.dumps(d["ec_rewrite"], default=str)[:160],
            d["fsck_differences"],
        ]
        for d in st["days"]
    ]
    links = "".join(f'<li><a href="file://{html.escape(p)}">{html.escape(p)}</a></li>' for p in st["reports"])
    parts.append(
        _section(
            "Storage: tiers, EC rewrites, scrub",
            _pre(st["tiers_now"])
            + _table(["day", "new warm volumes", "ec_rewrite (verified)", "fsck differences"], storage_rows)
            + _pre(st["scrubs"])
            + f"<p>Per-day tiering reports:</p><ul>{links}</ul>",
        )
    )
    fan = report["fanout"]["days"]
    parts.append(
        _section(
            "Fan-out policy",
            _table(
                ["day", "T*", "budgets", "writes saved vs pure push", "replay worst errors", "report"],
                [
                    [
                        d["as_of"][:10],
                        d["threshold"],
                        d["budgets"],
                        d["saved_vs_pure_push_writes"],
                        d["replay_errors"],
                        d["report"],
                    ]
                    for d in fan
                ],
            ),
        )
    )
    m = report["models"]
    parts.append(
        _section(
            "Models (MLflow)",
            f"<p>Tracking store: {html.escape(m['tracking_uri'])}</p>" + _pre(m["registry"]) + _pre(m["experiments"]),
        )
    )
    fd = report["feeds"]
    feed_rows = [
        [
            p["as_of"],
            r.get("group"),
            r.get("version"),
            r.get("state"),
            sum(v.get("keys", 0) for v in (r.get("verified") or {}).values()),
        ]
        for p in fd["published"] + fd["explore"]
        for r in p["results"]
    ]
    parts.append(
        _section(
            "Feeds published to Redis",
            _table(["as of", "group", "version", "state", "keys verified"], feed_rows) + _pre(fd.get("sample_read")),
        )
    )
    parts.append(_section("Look at what just ran", _pre(report["ui"])))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}pre{background:#f6f6f6;padding:6px;font-size:12px;"
        "max-height:360px;overflow:auto}img{max-width:100%}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(parts)}"
    page += "</body></html>\n"
    target = out / "report.html"
    target.write_text(page)
    return target

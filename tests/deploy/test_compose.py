"""The scale-out stack without a Docker engine: docker-compose.yml against the Compose specification's JSON schema, its
environment against DarkroomSettings, the files it and the Dockerfile name, and the object-store lake settings.

The compose file is read as ``docker compose`` reads it: YAML (merge keys included), then ``${VAR}`` interpolation
with the values of ``deploy/.env.example``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator
from pydantic import BaseModel

from darkroom.settings import PROJECT_ROOT, DarkroomSettings, SettingsError, load_settings
from darkroom.spark import spark_conf
from darkroom.tables import LOCAL_ONLY, all_tables, table

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
SCHEMA = PROJECT_ROOT / "deploy" / "compose-spec.json"
ENV_EXAMPLE = PROJECT_ROOT / "deploy" / ".env.example"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No DARKROOM_* variable of the caller's shell reaches the settings these tests load."""
    for k in [k for k in os.environ if k.startswith("DARKROOM_")]:
        monkeypatch.delenv(k)


@pytest.fixture
def no_jars(tmp_path) -> Path:
    """A jars folder whose manifest lists no jar: enough for ``spark_conf`` (no Spark is started here)."""
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "MANIFEST.json").write_text(json.dumps({"coordinates": [], "jars": []}))
    return tmp_path / "jars"


# --- reading the compose file as compose does -------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments skipped; no quoting is used in the example."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class MissingVariable(KeyError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}`` (no nesting, which the file does not use)."""

    def one(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = _BRACED.fullmatch(m["braced"])
        assert b, f"cannot interpolate ${{{m['braced']}}}"
        name, op, arg = b["name"], b["op"], b["arg"]
        assert arg is None or "$" not in arg, f"nested interpolation in ${{{m['braced']}}}"
        value = env.get(name)
        present = value is not None and (value != "" or not (op or "").startswith(":"))
        if op is None:
            return value or ""
        if op.endswith("-"):
            return value if present else arg
        if op.endswith("?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return value
        return arg if present else ""  # + and :+

    return _VAR.sub(one, text)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    return node


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolated(raw, read_env_file(ENV_EXAMPLE) if env is None else env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def darkroom_services(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Every service that runs darkroom code: the ones whose environment holds darkroom settings."""
    out = {}
    for name, service in compose["services"].items():
        env = environment(service)
        if any(k.startswith("DARKROOM_") for k in env):
            out[name] = env
    return out


def setting_env_names() -> set[str]:
    """Every environment variable name DarkroomSettings reads: ``DARKROOM_<FIELD>`` and, for nested settings, also
    ``DARKROOM_<FIELD>__<SUBFIELD>`` at any depth."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field_name, field in model.model_fields.items():
            env_name = f"{prefix}{field_name.upper()}"
            names.add(env_name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation, env_name + "__")

    walk(DarkroomSettings, DarkroomSettings.model_config["env_prefix"])
    return names


def settings_of(env: dict[str, str], monkeypatch, **overrides) -> DarkroomSettings:
    for k, v in env.items():
        if k.startswith("DARKROOM_"):
            monkeypatch.setenv(k, v)
    return load_settings(**overrides)


# --- (a) the Compose specification ------------------------------------------------------------------------------------


def compose_schema_errors(doc: dict[str, Any]) -> list[str]:
    # The vendored schema names draft 2019-09 by an http:// URL jsonschema does not map to a draft: name it here.
    schema = json.loads(SCHEMA.read_text())
    validator = Draft201909Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_the_vendored_schema_is_a_valid_draft_2019_09_schema():
    schema = json.loads(SCHEMA.read_text())
    Draft201909Validator.check_schema(schema)
    # Unknown top-level keys and unknown service keys are errors, not ignored.
    assert schema["additionalProperties"] is False and schema["definitions"]["service"]["additionalProperties"] is False


def test_compose_file_validates_against_the_compose_spec():
    assert compose_schema_errors(load_compose()) == []


def test_the_schema_check_catches_a_wrong_compose_file():
    doc = load_compose()
    doc["services"]["redis"]["imgae"] = "redis:7"
    doc["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    errors = compose_schema_errors(doc)
    assert any(e.startswith("services/redis") and "imgae" in e for e in errors), errors
    assert any(e.startswith("services/mlflow/depends_on") for e in errors), errors


def test_a_missing_secret_stops_interpolation_naming_it():
    env = read_env_file(ENV_EXAMPLE)
    del env["REDIS_PASSWORD"]
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
        load_compose(env)
    env["REDIS_PASSWORD"] = ""  # ${VAR:?} refuses an empty value too
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
        load_compose(env)


def test_every_secret_comes_from_the_env_file():
    """Passwords, keys and secrets in the compose file are interpolated, never literal; the example names each."""
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    raw = yaml.safe_load(text)
    example = read_env_file(ENV_EXAMPLE)
    secret = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY|ACCESS_KEY|ACCESS_KEY_ID|REDISCLI_AUTH)$")
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if secret.search(key):
                assert value.startswith("${"), f"{name}: {key} is a literal, not ${{VAR}} from deploy/.env"
    # Passwords in URLs (user:password@host) and on command lines too.
    for password in re.findall(r"://[^/\s:@]*:([^@\s]+)@", text) + re.findall(r"--requirepass[\s\"',]+(\S+)", text):
        assert password.startswith("${"), f"a literal password in docker-compose.yml: {password}"
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    assert used <= set(example), f"required by docker-compose.yml, missing in .env.example: {used - set(example)}"


def test_docker_compose_config_accepts_the_file(tmp_path):
    """What the Docker CLI's compose plugin says about the file, when the plugin is here (no daemon is needed)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the docker compose plugin is absent: {(probe.stderr or probe.stdout).strip().splitlines()[0]}")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    cmd = [docker, "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "--profile", "cli", "config", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


# --- (b) and (c) the stack's settings ---------------------------------------------------------------------------------


def test_every_darkroom_variable_is_a_setting():
    known = setting_env_names()
    compose = load_compose()
    services = darkroom_services(compose)
    assert {"airflow-scheduler", "spark-worker-1", "spark-worker-2"} <= set(services)
    for name, service in compose["services"].items():
        unknown = sorted(k for k in environment(service) if k.startswith("DARKROOM_") and k not in known)
        assert not unknown, f"{name}: {unknown} name no darkroom setting"
    image_env = [
        w.split("=", 1)[0] for word, rest in dockerfile_instructions() if word == "ENV" for w in shlex.split(rest)
    ]
    assert "DARKROOM_STATE_DIR" in image_env
    assert not [k for k in image_env if k.startswith("DARKROOM_") and k not in known], image_env


def test_setting_names_walk_nested_settings():
    known = setting_env_names()
    assert {"DARKROOM_LAKE_URI", "DARKROOM_S3", "DARKROOM_S3__ENDPOINT_URL", "DARKROOM_SPARK__CONF"} <= known
    assert "DARKROOM_PRECOMPUTE__RING_WEIGHTS__DMS" in known
    assert "DARKROOM_SPARK__MASTR" not in known


def test_every_darkroom_service_has_the_same_settings():
    services = darkroom_services(load_compose())
    darkroom_env = [{k: v for k, v in env.items() if k.startswith("DARKROOM_")} for env in services.values()]
    assert all(env == darkroom_env[0] for env in darkroom_env), "services disagree on the darkroom settings"


def test_settings_load_from_each_darkroom_service(monkeypatch, no_jars):
    compose = load_compose()
    example = read_env_file(ENV_EXAMPLE)
    services = darkroom_services(compose)
    for name, env in services.items():
        with monkeypatch.context() as m:
            s = settings_of(env, m)
            conf = spark_conf(settings_of(env, m, jars_path=no_jars), "stack")
        assert s.spark.master == "spark://spark-master:7077", name
        assert s.lake_uri == "s3a://darkroom-lake/lake" and s.lake_on_object_store, name
        assert s.mlflow.tracking_uri == "http://mlflow:5000", name
        assert s.redis_url == f"redis://:{example['REDIS_PASSWORD']}@redis:6379/0", name
        assert s.state_dir == Path("/data/darkroom") and s.jars_dir == Path("/opt/darkroom/jars"), name
        assert table("bronze.users").uri(s) == "s3a://darkroom-lake/lake/bronze/users", name
        assert table("marts.dim_user_features").uri(s) == "/data/darkroom/lake/marts/dim_user_features", name
        assert conf["spark.master"] == "spark://spark-master:7077"
        assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
        assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
        assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
        assert conf["spark.cores.max"] == "2"
        # S3A's credentials come from the environment Spark copies them from, not from the settings.
        assert env["AWS_ACCESS_KEY_ID"] == example["S3_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == example["S3_SECRET_KEY"], name
        assert not any("secret" in k or "access.key" in k for k in conf), name


def test_the_stack_serves_what_the_settings_point_at(monkeypatch):
    """The URIs in the settings name services of the file, on their ports, with the buckets and passwords they have."""
    compose = load_compose()
    services = compose["services"]
    env = next(iter(darkroom_services(compose).values()))
    s = settings_of(env, monkeypatch)
    master = services["spark-master"]["command"]
    assert f"spark://{master[master.index('--host') + 1]}:{master[master.index('--port') + 1]}" == s.spark.master
    for worker in ("spark-worker-1", "spark-worker-2"):
        assert services[worker]["command"][-1] == s.spark.master
    lake_bucket = s.lake_uri.removeprefix("s3a://").split("/")[0]
    assert environment(services["minio-init"])["LAKE_BUCKET"] == lake_bucket
    mlflow = dict(arg.removeprefix("--").split("=", 1) for arg in services["mlflow"]["command"] if "=" in arg)
    assert s.mlflow.tracking_uri == f"http://mlflow:{mlflow['port']}"
    assert f"mlflow:{mlflow['port']}" in mlflow["allowed-hosts"].split(",")
    mlflow_bucket = mlflow["artifacts-destination"].removeprefix("s3://").split("/")[0]
    assert environment(services["minio-init"])["MLFLOW_BUCKET"] == mlflow_bucket
    redis = services["redis"]["command"]
    assert s.redis_url.startswith(f"redis://:{redis[redis.index('--requirepass') + 1]}@redis:6379/")
    assert s.s3.endpoint_url == "http://minio:9000" and "9000:9000" in " ".join(services["minio"]["ports"])


def test_airflow_spark_default_is_the_settings_master(monkeypatch, tmp_path):
    """``AIRFLOW_CONN_SPARK_DEFAULT`` as SparkSubmitHook resolves it equals ``DARKROOM_SPARK__MASTER``."""
    env = environment(load_compose()["services"]["airflow-scheduler"])
    code = (
        "from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook\n"
        "print(SparkSubmitHook(conn_id='spark_default')._connection['master'])"
    )
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_"))},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW_CONN_SPARK_DEFAULT": env["AIRFLOW_CONN_SPARK_DEFAULT"],
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=run_env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == env["DARKROOM_SPARK__MASTER"]


def test_the_state_folder_is_shared_by_the_driver_and_the_executors():
    """Spark writes the LOCAL_ONLY tables by local path: the driver (scheduler, CLI) and the executors (workers) must
    mount the same volume at DARKROOM_STATE_DIR."""
    compose = load_compose()
    for name in ("airflow-scheduler", "darkroom-cli", "spark-worker-1", "spark-worker-2"):
        service = compose["services"][name]
        state_dir = environment(service)["DARKROOM_STATE_DIR"]
        assert f"darkroom-state:{state_dir}" in service.get("volumes", []), name


# --- (d) the files the Dockerfile and the compose file name -----------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def app_dir() -> str:
    [workdir] = [rest for word, rest in dockerfile_instructions() if word == "WORKDIR"]
    return workdir.rstrip("/") + "/"


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert {".venv", ".darkroom", ".git", "bench/results", "deploy/.env"} <= ignored
    copies = [shlex.split(rest) for word, rest in dockerfile_instructions() if word == "COPY"]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args)
        for source in args[:-1]:
            assert (PROJECT_ROOT / source).exists(), f"COPY {source}: not in the repo"
            assert source == "." or source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_dockerfile_entrypoint_and_base():
    instructions = dict(dockerfile_instructions())
    assert instructions["FROM"] == "python:3.11-slim-bookworm"
    [entrypoint] = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint.startswith(app_dir())
    script = PROJECT_ROOT / entrypoint.removeprefix(app_dir())
    assert script.is_file() and os.access(script, os.X_OK), script
    run = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert "openjdk-17-jre-headless" in run
    assert "-r requirements.txt" in run and "-c constraints.txt" in run
    assert "python -m darkroom.jars" in run and "deploy/s3a_jars.py" in run


def test_compose_names_files_that_exist():
    compose = load_compose()
    prefix = app_dir()
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (COMPOSE.parent / context).resolve() == PROJECT_ROOT, f"{name}: build context {context}"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (PROJECT_ROOT / dockerfile).resolve() == DOCKERFILE, f"{name}: dockerfile {dockerfile}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
        words = [*_words(service.get("command")), *_words(service.get("entrypoint"))]
        words += _words((service.get("healthcheck") or {}).get("test"))
        for word in words:
            for path in re.findall(rf"{re.escape(prefix)}[\w./-]+", word):
                assert (PROJECT_ROOT / path.removeprefix(prefix)).is_file(), f"{name}: names {path}, not in the repo"
    mounted = {v.split(":")[1] for s in compose["services"].values() for v in s.get("volumes", []) if v[0] == "."}
    assert "/docker-entrypoint-initdb.d/10-init-databases.sh" in mounted


def _words(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else list(value)


def test_the_image_resolves_hadoop_aws_of_sparks_hadoop():
    import importlib.util

    from darkroom.jars import _spark_jars_dir

    spec = importlib.util.spec_from_file_location("s3a_jars", PROJECT_ROOT / "deploy" / "s3a_jars.py")
    s3a_jars = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s3a_jars)
    spark_jars = _spark_jars_dir()
    [client] = sorted(p.name for p in spark_jars.glob("hadoop-client-api-*.jar"))
    version = client.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert s3a_jars.hadoop_aws_coordinates(spark_jars) == [f"org.apache.hadoop:hadoop-aws:{version}"]


# --- (e) the object-store lake settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lake_uri",
    [
        "s3://darkroom-lake/lake",
        "gs://darkroom-lake/lake",
        "file:///data/lake",
        "lake",
        "./lake",
        "",
        "s3a://Bad_Bucket",
    ],
)
def test_a_bad_lake_uri_fails_naming_the_key(lake_uri):
    with pytest.raises(SettingsError, match=r"lake_uri"):
        load_settings(lake_uri=lake_uri)


def test_a_bad_lake_uri_from_the_environment_fails_naming_the_key(monkeypatch):
    monkeypatch.setenv("DARKROOM_LAKE_URI", "s3://darkroom-lake/lake")
    with pytest.raises(SettingsError, match=r"lake_uri.*s3a://"):
        load_settings()


def test_a_bad_s3_endpoint_fails_naming_the_key(monkeypatch):
    monkeypatch.setenv("DARKROOM_S3__ENDPOINT_URL", "minio:9000")
    with pytest.raises(SettingsError, match=r"s3\.endpoint_url"):
        load_settings()


def test_an_s3a_lake_gives_s3a_configs_and_uris_under_the_bucket(tmp_path, no_jars):
    s = load_settings(
        state_dir=tmp_path,
        jars_path=no_jars,
        lake_uri="s3a://lake-bucket/prod/lake/",
        s3={"endpoint_url": "https://s3.example.test/", "region": "eu-west-1", "path_style_access": True},
    )
    assert s.lake_uri == "s3a://lake-bucket/prod/lake" and s.s3.endpoint_url == "https://s3.example.test"
    assert table("bronze.users").uri(s) == "s3a://lake-bucket/prod/lake/bronze/users"
    assert table("serving.feed_timelines").uri(s) == "s3a://lake-bucket/prod/lake/serving/feed_timelines"
    # What code outside Spark writes or reads by local path stays in the local lake folder.
    assert table("meta.media_placement").uri(s) == str(tmp_path / "lake" / "meta" / "media_placement")
    assert table("meta.ingest_ledger").uri(s) == str(tmp_path / "lake" / "meta" / "ingest_ledger")
    assert table("landing.users").uri(s) == str(tmp_path / "landing" / "users")
    conf = spark_conf(s, "t")
    assert {k: v for k, v in conf.items() if k.startswith("spark.hadoop.fs.s3a.")} == {
        "spark.hadoop.fs.s3a.endpoint": "https://s3.example.test",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "true",
        "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
    }


def test_on_aws_only_path_style_is_set(tmp_path, no_jars):
    s = load_settings(state_dir=tmp_path, jars_path=no_jars, lake_uri="s3a://lake-bucket")
    conf = spark_conf(s, "t")
    assert {k: v for k, v in conf.items() if "s3a" in k} == {"spark.hadoop.fs.s3a.path.style.access": "false"}
    assert table("bronze.users").uri(s) == "s3a://lake-bucket/bronze/users"


def test_without_lake_uri_nothing_changes(tmp_path, no_jars):
    s = load_settings(state_dir=tmp_path, jars_path=no_jars)
    assert s.lake_uri is None and not s.lake_on_object_store and s.lake_dir == tmp_path / "lake"
    assert all(t.uri(s) == str(t.path(s)) for t in all_tables())
    assert table("bronze.users").uri(s) == str(tmp_path / "lake" / "bronze" / "users")
    # S3 settings alone do not touch a local lake's Spark configuration.
    s3 = load_settings(state_dir=tmp_path, jars_path=no_jars, s3={"endpoint_url": "http://minio:9000"})
    assert spark_conf(s3, "t") == spark_conf(s, "t")
    assert not any("s3a" in k for k in spark_conf(s, "t"))


def test_a_local_lake_uri_moves_the_whole_lake(tmp_path):
    s = load_settings(state_dir=tmp_path / "state", lake_uri=str(tmp_path / "elsewhere"))
    assert s.lake_dir == tmp_path / "elsewhere" and not s.lake_on_object_store
    assert table("bronze.users").uri(s) == str(tmp_path / "elsewhere" / "bronze" / "users")
    assert table("marts.dim_user_features").uri(s) == str(tmp_path / "elsewhere" / "marts" / "dim_user_features")


def test_local_only_names_real_layers_and_tables():
    layers = {t.layer for t in all_tables()}
    names = {t.qualified_name for t in all_tables()}
    assert all(key in layers or key in names for key in LOCAL_ONLY), set(LOCAL_ONLY) - layers - names


def test_the_entrypoint_checks_the_settings_and_derives_airflow_defaults(tmp_path):
    """deploy/entrypoint.sh with a darkroom service's environment: settings load, Airflow's retries come from them;
    a bad setting stops the container before its command, naming the key."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **darkroom_services(load_compose())["airflow-scheduler"],
        "DARKROOM_AIRFLOW__TASK_RETRIES": "5",
    }
    entrypoint = PROJECT_ROOT / "deploy" / "entrypoint.sh"
    show = ["bash", str(entrypoint), "sh", "-c", 'echo "$AIRFLOW__CORE__DEFAULT_TASK_RETRIES $SPARK_LOCAL_HOSTNAME"']
    done = subprocess.run(show, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    retries, spark_host = done.stdout.split()
    assert retries == "5" and spark_host
    env["DARKROOM_LAKE_URI"] = "s3://darkroom-lake/lake"
    done = subprocess.run(show, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert "lake_uri" in done.stderr

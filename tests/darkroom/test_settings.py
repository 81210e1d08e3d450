"""Settings: defaults from the local profile, YAML and env overrides, and bad keys or values fail naming the key."""

from __future__ import annotations

import pytest

from darkroom.settings import PROJECT_ROOT, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in [k for k in __import__("os").environ if k.startswith("DARKROOM_")]:
        monkeypatch.delenv(k)


def test_local_profile_defaults():
    s = load_settings()
    assert s.state_dir == (PROJECT_ROOT / ".darkroom").resolve()
    assert s.spark.master == "local[*]" and s.world.scale == "small"
    assert s.lake_dir == s.state_dir / "lake" and s.jars_dir == s.state_dir / "jars"


def test_yaml_then_env_override(tmp_path, monkeypatch):
    cfg = tmp_path / "cluster.yml"
    cfg.write_text("spark:\n  master: spark://10.0.0.5:7077\n  shuffle_partitions: 200\nworld:\n  seed: 3\n")
    monkeypatch.setenv("DARKROOM_SPARK__SHUFFLE_PARTITIONS", "64")
    s = load_settings(cfg)
    assert s.spark.master == "spark://10.0.0.5:7077"
    assert s.spark.shuffle_partitions == 64  # env beats YAML
    assert s.world.seed == 3 and s.world.scale == "small"  # untouched keys keep the profile's values
    # the file was for that call: the next load without one is the profile again
    assert load_settings().spark.master == "local[*]"


@pytest.mark.parametrize(
    "yaml_text, named",
    [
        ("spark:\n  mastr: local[2]\n", "spark.mastr"),
        ("world:\n  scale: huge\n", "world.scale"),
        ("spark:\n  master: http://nope\n", "spark.master"),
        ("ingest:\n  max_bad_fraction: 2\n", "ingest.max_bad_fraction"),
        ("colour: blue\n", "colour"),
    ],
)
def test_bad_keys_and_values_fail_naming_the_key(tmp_path, yaml_text, named):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(yaml_text)
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings(cfg)


def test_bad_env_value_names_the_key(monkeypatch):
    monkeypatch.setenv("DARKROOM_WORLD__SEED", "forty-two")
    with pytest.raises(SettingsError, match=r"world\.seed"):
        load_settings()


def test_unreadable_yaml_names_the_file(tmp_path):
    cfg = tmp_path / "broken.yml"
    cfg.write_text("spark: [unclosed\n")
    with pytest.raises(SettingsError, match="broken.yml is not valid YAML"):
        load_settings(cfg)

"""Tests of the settings table and load_settings (file → env → overrides)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from relaybox.config import (
    CONFIG_FILE,
    SETTINGS_TABLE,
    ConfigError,
    Settings,
    effective,
    load_settings,
    render_config_file,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def write_config(data_dir: Path, text: str) -> Path:
    path = data_dir / CONFIG_FILE
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(data_dir: Path, env: dict[str, str] | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(data_dir, env=env or {}, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


# -- defaults and where the data dir comes from -------------------------------------------


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    assert settings == Settings(data_dir=tmp_path)
    assert settings.port == 8787
    assert settings.sqlite_synchronous == "full"
    assert settings.sqlite_path == tmp_path / "relaybox.db"
    assert settings.backups_path == tmp_path / "backups"
    assert settings.base_url == "http://127.0.0.1:8787"


def test_data_dir_from_env_when_not_given(tmp_path: Path) -> None:
    settings = load_settings(None, env={"RELAYBOX_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path


def test_data_dir_argument_beats_env(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"RELAYBOX_DATA_DIR": str(tmp_path / "other")})
    assert settings.data_dir == tmp_path


def test_data_dir_default_when_nothing_given() -> None:
    assert load_settings(None, env={}).data_dir == Path("relaybox-data")


# -- precedence -----------------------------------------------------------------------------


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    write_config(tmp_path, "port = 1001\nhost = '0.0.0.0'\n[gateway]\nwindow = 10\n")
    env = {"RELAYBOX_PORT": "1002", "RELAYBOX_GATEWAY_WINDOW": "20"}

    from_file = load_settings(tmp_path, env={})
    assert (from_file.port, from_file.host, from_file.gateway_window) == (1001, "0.0.0.0", 10)

    from_env = load_settings(tmp_path, env=env)
    assert (from_env.port, from_env.host, from_env.gateway_window) == (1002, "0.0.0.0", 20)

    from_flags = load_settings(tmp_path, env=env, overrides={"port": 1003, "host": None})
    assert (from_flags.port, from_flags.host, from_flags.gateway_window) == (1003, "0.0.0.0", 20)


def test_values_are_converted_to_the_setting_type(tmp_path: Path) -> None:
    write_config(tmp_path, "[gateway]\nheartbeat_s = 5\n")
    env = {"RELAYBOX_METRICS_ENABLED": "off", "RELAYBOX_STORAGE_READ_THREADS": "8"}
    settings = load_settings(tmp_path, env=env)
    assert settings.gateway_heartbeat_s == 5.0
    assert isinstance(settings.gateway_heartbeat_s, float)
    assert settings.metrics_enabled is False
    assert settings.read_threads == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), ("On", True),
     ("0", False), ("false", False), ("no", False), ("OFF", False)],
)
def test_bool_spellings_from_env(tmp_path: Path, text: str, expected: bool) -> None:
    settings = load_settings(tmp_path, env={"RELAYBOX_TRACING_ENABLED": text})
    assert settings.tracing_enabled is expected


def test_unrelated_relaybox_env_is_ignored(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"RELAYBOX_TEST_POSTGRES_URL": "postgresql://x/y"})
    assert settings == Settings(data_dir=tmp_path)


# -- problems name the key, the value and the origin ------------------------------------------


def test_unknown_key_suggests_the_close_one_and_names_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "prot = 8080\n")
    [problem] = problems_of(tmp_path)
    assert str(cfg) in problem
    assert "unknown key 'prot'" in problem
    assert "did you mean 'port'?" in problem


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    write_config(tmp_path, "[gateway]\nwindw = 3\n")
    [problem] = problems_of(tmp_path)
    assert "did you mean 'gateway.window'?" in problem


def test_data_dir_cannot_be_set_in_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "data_dir = '/elsewhere'\n")
    [problem] = problems_of(tmp_path)
    assert str(cfg) in problem
    assert "data_dir cannot be set in the file" in problem


def test_port_out_of_range_names_key_value_and_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "port = 70000\n")
    [problem] = problems_of(tmp_path)
    assert problem.startswith("port = 70000")
    assert str(cfg) in problem
    assert "between 1 and 65535" in problem


def test_env_problem_names_the_variable(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_PORT": "0"})
    assert "port = '0'" in problem
    assert "env RELAYBOX_PORT" in problem


def test_override_problem_says_command_line(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, overrides={"workers": 0})
    assert "workers = 0" in problem
    assert "command line" in problem


@pytest.mark.parametrize("text", ["maybe", "2", ""])
def test_bad_bool(tmp_path: Path, text: str) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_METRICS_ENABLED": text})
    assert "metrics.enabled" in problem
    assert "expected true or false" in problem


def test_bad_bool_in_file(tmp_path: Path) -> None:
    write_config(tmp_path, "[metrics]\nenabled = 1\n")
    [problem] = problems_of(tmp_path)
    assert "expected true or false" in problem


@pytest.mark.parametrize("text", ["x", "80.5", "0x50", ""])
def test_bad_int_from_env(tmp_path: Path, text: str) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_PORT": text})
    assert f"port = {text!r}" in problem


@pytest.mark.parametrize("literal", ["80.5", "true"])
def test_bad_int_in_file(tmp_path: Path, literal: str) -> None:
    write_config(tmp_path, f"port = {literal}\n")
    [problem] = problems_of(tmp_path)
    assert problem.startswith("port = ")
    assert "expected a whole number" in problem


def test_bad_choice(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_LOG_LEVEL": "verbose"})
    assert "log_level = 'verbose'" in problem
    assert "must be one of debug, info, warning, error" in problem


def test_string_setting_refuses_a_number(tmp_path: Path) -> None:
    write_config(tmp_path, "host = 127\n")
    [problem] = problems_of(tmp_path)
    assert "expected a string" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write_config(tmp_path, "port = 0\nprot = 1\n")
    problems = problems_of(tmp_path, env={"RELAYBOX_WORKERS": "many"})
    assert len(problems) == 3


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "port = = 3\n")
    [problem] = problems_of(tmp_path)
    assert str(cfg) in problem
    assert "not valid TOML" in problem


# -- URLs and backup time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["sqlite:///relay.db", "sqlite:////var/lib/relaybox/relay.db",
     "postgresql://relay:pw@db.example:5432/relaybox", "postgres:///relaybox"],
)
def test_good_database_url(tmp_path: Path, url: str) -> None:
    assert load_settings(tmp_path, env={"RELAYBOX_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url",
    ["mysql://u:p@h/db", "sqlite://relay.db", "sqlite:///", "postgresql://", "just-a-path.db"],
)
def test_malformed_database_url(tmp_path: Path, url: str) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_DATABASE_URL": url})
    assert problem.startswith("database_url = ")


def test_database_url_problem_masks_the_password(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in problem
    assert "mysql://u:***@h/db" in problem


def test_sqlite_url_sets_the_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    settings = load_settings(tmp_path, env={"RELAYBOX_DATABASE_URL": url})
    assert settings.sqlite_path == tmp_path / "x.db"


def test_postgres_url_has_no_sqlite_path(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"RELAYBOX_DATABASE_URL": "postgresql://h/db"})
    assert settings.sqlite_path is None


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://:pw@redis.example:6380", "unix:///tmp/r.sock"]
)
def test_good_redis_url(tmp_path: Path, url: str) -> None:
    assert load_settings(tmp_path, env={"RELAYBOX_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://", "unix://", "localhost"])
def test_malformed_redis_url(tmp_path: Path, url: str) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_REDIS_URL": url})
    assert problem.startswith("redis_url = ")


@pytest.mark.parametrize("value", ["03:30", "0:00", "23:59", ""])
def test_good_backup_time(tmp_path: Path, value: str) -> None:
    assert load_settings(tmp_path, env={"RELAYBOX_BACKUP_TIME": value}).backup_time == value


@pytest.mark.parametrize("value", ["24:00", "12:60", "noon", "12", "12:3x", "-1:30", "12:30:00"])
def test_bad_backup_time(tmp_path: Path, value: str) -> None:
    [problem] = problems_of(tmp_path, env={"RELAYBOX_BACKUP_TIME": value})
    assert problem == f"backup.time = {value!r}: expected HH:MM"


def test_check_writable_reports_a_missing_parent(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path / "missing" / "data", check_writable=True)
    assert "does not exist" in problem


# -- effective() and the rendered config file -------------------------------------------------


def test_effective_lists_every_key_with_plain_values(tmp_path: Path) -> None:
    shown = effective(load_settings(tmp_path, env={}))
    assert list(shown) == [row.key for row in SETTINGS_TABLE]
    assert shown["data_dir"] == str(tmp_path)
    assert shown["port"] == 8787
    assert shown["metrics.token"] == ""


def test_effective_masks_secrets(tmp_path: Path) -> None:
    env = {
        "RELAYBOX_DATABASE_URL": "postgresql://relay:s3cret@db.example:5432/relaybox",
        "RELAYBOX_REDIS_URL": "redis://:hunter2@redis.example:6379/0",
        "RELAYBOX_METRICS_TOKEN": "tok-123",
    }
    settings = load_settings(tmp_path, env=env)
    shown = effective(settings)
    assert shown["database_url"] == "postgresql://relay:***@db.example:5432/relaybox"
    assert shown["redis_url"] == "redis://:***@redis.example:6379/0"
    assert shown["metrics.token"] == "***"
    text = repr(shown)
    assert "s3cret" not in text and "hunter2" not in text and "tok-123" not in text

    plain = effective(settings, mask=False)
    assert plain["database_url"] == env["RELAYBOX_DATABASE_URL"]
    assert plain["metrics.token"] == "tok-123"


def test_rendered_config_file_is_toml_and_loads_as_defaults(tmp_path: Path) -> None:
    text = render_config_file()
    doc = tomllib.loads(text)
    assert all(section == {} for section in doc.values())  # only empty [section] headers
    write_config(tmp_path, text)
    assert load_settings(tmp_path, env={}) == Settings(data_dir=tmp_path)


def test_rendered_config_file_uncommented_still_gives_defaults(tmp_path: Path) -> None:
    # Uncommenting every "# key = value" line must give a valid file meaning the defaults.
    value_line = re.compile(r"^# ([a-z_]+ = .*)$")
    lines = [value_line.sub(r"\1", line) for line in render_config_file().splitlines()]
    text = "\n".join(lines) + "\n"
    doc = tomllib.loads(text)
    assert len(doc) > 1
    write_config(tmp_path, text)
    assert load_settings(tmp_path, env={}) == Settings(data_dir=tmp_path)


# -- the table itself and its documentation ---------------------------------------------------


def test_table_keys_and_env_names_are_unique() -> None:
    keys = [row.key for row in SETTINGS_TABLE]
    envs = [row.env for row in SETTINGS_TABLE]
    assert len(set(keys)) == len(keys)
    assert len(set(envs)) == len(envs)
    assert all(env.startswith("RELAYBOX_") for env in envs)
    assert all(row.help for row in SETTINGS_TABLE)


def test_every_setting_is_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    missing = [row.key for row in SETTINGS_TABLE if f"`{row.key}`" not in docs]
    missing += [row.env for row in SETTINGS_TABLE if f"`{row.env}`" not in docs]
    assert not missing, f"not in docs/configuration.md: {', '.join(missing)}"

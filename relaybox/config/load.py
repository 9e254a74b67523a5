"""Loading the settings once: defaults, then relaybox.toml, then RELAYBOX_* env, then
flags; and rendering them back (the effective values, a commented config file)."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relaybox.config.checks import ConfigError, check_data_dir, check_settings, convert
from relaybox.config.table import BY_KEY, CONFIG_FILE, ENV_PREFIX, SETTINGS_TABLE, Settings
from relaybox.config.urls import mask_url


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def load_settings(
    data_dir: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    check_writable: bool = False,
) -> Settings:
    """Load settings: defaults, then relaybox.toml, then RELAYBOX_* env, then ``overrides``.

    ``overrides`` maps dotted keys to values from command-line flags (None = not given).
    Raises ConfigError with one line per problem.
    """
    environ = dict(os.environ if env is None else env)
    if data_dir is None:
        data_dir = environ.get(ENV_PREFIX + "DATA_DIR") or "relaybox-data"
    ddir = Path(data_dir).expanduser()
    values: dict[str, Any] = {"data_dir": ddir}
    problems: list[str] = []
    cfg = ddir / CONFIG_FILE

    if cfg.exists():
        try:
            doc = tomllib.loads(cfg.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError([f"{cfg}: not valid TOML: {exc}"]) from None
        for key, value in _flatten(doc).items():
            row = BY_KEY.get(key)
            if key == "data_dir":
                problems.append(f"{cfg}: data_dir cannot be set in the file; use --data-dir "
                                "or RELAYBOX_DATA_DIR")
                continue
            if row is None:
                hint = difflib.get_close_matches(key, list(BY_KEY), n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                problems.append(f"{cfg}: unknown key {key!r}{more}")
                continue
            out, problem = convert(row, value, str(cfg))
            if problem:
                problems.append(problem)
            else:
                values[row.attr] = out

    for row in SETTINGS_TABLE:
        if row.key == "data_dir" or row.env not in environ:
            continue
        out, problem = convert(row, environ[row.env], f"env {row.env}")
        if problem:
            problems.append(problem)
        else:
            values[row.attr] = out

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        row = BY_KEY[key]
        out, problem = convert(row, value, "command line")
        if problem:
            problems.append(problem)
        else:
            values[row.attr] = out

    if problems:
        raise ConfigError(problems)
    settings = Settings(**values)
    problems = check_settings(settings)
    if check_writable:
        problems += check_data_dir(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def effective(settings: Settings, *, mask: bool = True) -> dict[str, Any]:
    """The effective settings as {dotted key: value}, secrets masked."""
    out: dict[str, Any] = {}
    for row in SETTINGS_TABLE:
        value = getattr(settings, row.attr)
        if isinstance(value, Path):
            value = str(value)
        if mask and row.secret and value:
            value = mask_url(value) if "://" in value else "***"
        out[row.key] = value
    return out


def render_config_file(settings: Settings | None = None) -> str:
    """A commented relaybox.toml listing every setting at its default."""
    lines = ["# relaybox configuration. Every key is optional; shown at its default.",
             "# Environment variables RELAYBOX_<SECTION>_<KEY> override this file.", ""]
    section = None
    for row in SETTINGS_TABLE:
        if row.key == "data_dir":
            continue
        sect, _, name = row.key.rpartition(".")
        if sect != section:
            if sect:
                lines += ["", f"[{sect}]"]
            section = sect
        lines.append(f"# {row.help}")
        lines.append(f"# {name or row.key} = {_toml_value(row.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

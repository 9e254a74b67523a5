"""The settings: one table (table.py), loaded once (load.py: file → env → flags) into a
frozen ``Settings`` that is passed down; checks.py validates, urls.py parses and masks
URL settings. No other module reads ``os.environ``."""

from __future__ import annotations

from relaybox.config.checks import ConfigError, check_data_dir
from relaybox.config.load import effective, load_settings, render_config_file
from relaybox.config.table import (
    BY_KEY,
    CONFIG_FILE,
    ENV_PREFIX,
    SETTINGS_TABLE,
    SettingInfo,
    Settings,
)
from relaybox.config.urls import (
    SENTINEL_PORT,
    SENTINEL_SCHEMES,
    SentinelURL,
    mask_url,
    sentinel_url,
)

__all__ = ["BY_KEY", "CONFIG_FILE", "ENV_PREFIX", "SENTINEL_PORT", "SENTINEL_SCHEMES",
           "SETTINGS_TABLE", "ConfigError", "SentinelURL", "SettingInfo", "Settings",
           "check_data_dir", "effective", "load_settings", "mask_url", "render_config_file",
           "sentinel_url"]

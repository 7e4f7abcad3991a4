"""Default locations, following the XDG base directory conventions."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "custode"


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP))


def state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP))


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP))


def default_config_file() -> Path:
    """``$CUSTODE_CONFIG`` if set, else ``$XDG_CONFIG_HOME/custode/config.toml``."""
    env = os.environ.get("CUSTODE_CONFIG")
    return Path(env) if env else config_dir() / "config.toml"

"""Shared pytest fixtures: real repositories built with real git (see tests/fixtures/)."""

from fixtures.builders import *  # noqa: F403  (pytest fixtures are found by name)
from fixtures.cli import *  # noqa: F403
from fixtures.hostile import *  # noqa: F403
from fixtures.s3server import *  # noqa: F403

"""Shared pytest fixtures: real repositories built with real git (see tests/fixtures/)."""

from hypothesis import HealthCheck, settings

from fixtures.builders import *  # noqa: F403  (pytest fixtures are found by name)
from fixtures.cli import *  # noqa: F403
from fixtures.hostile import *  # noqa: F403
from fixtures.s3server import *  # noqa: F403

# The property tests check what is decided, not how fast: on a busy host (CI runs the suite
# in parallel on two cores) hypothesis's per-example deadline and its "data generation is
# too slow" health check fail a correct test. Speed lives in bench/.
settings.register_profile("custode", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("custode")

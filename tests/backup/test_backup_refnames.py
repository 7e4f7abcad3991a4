"""Ref names read from a backup become file names on restore: only git's valid names pass."""

import pytest

from custode.backup.roots import valid_ref_name


@pytest.mark.parametrize(
    "name",
    ["refs/heads/main", "refs/tags/v1.0", "refs/remotes/origin/HEAD", "refs/notes/commits",
     "refs/heads/feature/x-y_z", "refs/heads/ünïcode"],
)  # fmt: skip
def test_valid_names_pass(name: str) -> None:
    assert valid_ref_name(name)


@pytest.mark.parametrize(
    "name",
    ["HEAD", "refs/heads/../../config", "refs/../evil", "/etc/passwd", "refs/heads/",
     "refs//heads/x", "refs/heads/.hidden", "refs/heads/x.lock", "refs/heads/a b",
     "refs/heads/a~1", "refs/heads/a^", "refs/heads/a:b", "refs/heads/a\\b", "refs/heads/a\nb",
     "refs/heads/a@{1}", "refs/heads/x.", "heads/main", "refs/heads/a*"],
)  # fmt: skip
def test_invalid_names_are_refused(name: str) -> None:
    assert not valid_ref_name(name)

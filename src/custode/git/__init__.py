"""Driving git: the one hardened runner, its policy, repository locks, ref snapshots."""

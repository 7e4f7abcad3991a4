"""Backup and restore: git-native, encrypted, verified backups of the fleet."""

"""Helpers every layer uses: units, paths, reading untrusted files, path text."""

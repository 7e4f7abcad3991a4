"""The daemon: HTTP server, its web config, the job scheduler."""

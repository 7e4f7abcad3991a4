"""The application core: one function per job (scan, maintain, check, backup, restore,
verify, forget, the nightly cycle), each taking typed inputs and returning a typed result
of what was done per repository, with reasons and timings. Every entry point (the CLI
commands, ``custode run``, the daemon's jobs) calls these; the CLI only parses options
and renders results. Recording (history rows, observations, audit entries, pruning by
``state.keep_history``) happens here, the same way for every entry point."""

"""Reading the fleet: discovery, each repository's state, the scan cache."""

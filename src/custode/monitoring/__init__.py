"""Monitoring: Prometheus metrics of the fleet, git operation timings, alerts."""

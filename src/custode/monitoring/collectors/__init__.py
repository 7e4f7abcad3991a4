"""Prometheus collectors, one per source, each building fresh metric families per call
from state its owner refreshed (the custom-collector style of prometheus_client)."""

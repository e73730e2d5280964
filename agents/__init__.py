"""Faust agents and the app wiring: ingest bridge, customer actor, feedback."""

"""Actor state: state classes, table definitions, windowed aggregates."""

"""Package data: the registry catalog and the embedded default policy."""

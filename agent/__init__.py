"""Estate agent: collects this endpoint's inventory and reports it to the hub."""

# Estate's version, written only here: pyproject.toml reads it (the hub reads it back from
# the installed distribution's metadata, for export manifests).
__version__ = "0.1.0"

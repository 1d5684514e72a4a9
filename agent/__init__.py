"""Estate agent: collects this endpoint's inventory and reports it to the hub."""

__version__ = "0.1.0"

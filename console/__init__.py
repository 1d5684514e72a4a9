"""Estate console: `estate`, the Textual terminal app IT staff use, and its verbs (ssh, tunnel,
export, verify). It reaches the estate only through the hub, over SSH."""

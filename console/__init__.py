"""Estate console: the Textual terminal app IT staff use (see the console issue)."""

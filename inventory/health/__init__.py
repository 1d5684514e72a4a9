"""Estate health: connectivity verdicts, incidents correlated per site, and alerts."""

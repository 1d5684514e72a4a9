"""The hub: SSH gateway for agents (and later operators), enrolment, ingest and admin verbs."""

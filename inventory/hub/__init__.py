"""The hub: SSH gateway for agents and operators (API, watch, export, remote access),
enrolment, ingest and admin verbs."""

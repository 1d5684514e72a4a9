"""Estate inventory: report schema, field dictionary, and (later) the hub's store.

Deliberately imports nothing: the agent imports `inventory.report` alone and must not pay for
the hub's dependencies.
"""

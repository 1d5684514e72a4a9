"""Estate inventory: the hub, its store and exports, and the shared core (report schema,
field dictionary, filters, protocol, errors) that the agent and the console import too.

Deliberately imports nothing: the agent imports `estate.inventory.report` alone and must not pay for
the hub's dependencies.
"""

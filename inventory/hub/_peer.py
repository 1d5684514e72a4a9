"""Who is on the other end of a connection, once logged in: the identity every part of the hub
that serves a client works from, instead of the connection object itself."""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from estate.inventory.store import Operator


@dataclass(frozen=True)
class Peer:
    """A logged-in client.

    `role` is what it logged in as: "agent" (`name` is its agent id), "operator" (`name` is
    the operator's name, `operator` their record: role, agencies, key) or "enrol" (any key;
    `name` is "enrol"). `address` is "host:port"; `source` is the front door's budget key for
    it (the IPv4 address, or the IPv6 /64: `_door.source_of`).
    """

    role: str
    name: str
    address: str
    source: str
    key: asyncssh.SSHKey
    operator: Operator | None = None

    @property
    def agencies(self) -> list[str] | None:
        """The agencies an operator sees (None: all); agents and `enrol` see none."""
        return self.operator.agencies if self.operator is not None else []

    @property
    def host(self) -> str:
        """The address without its port (the audit log's `source` for per-channel refusals)."""
        return self.address.rsplit(":", 1)[0]

    @property
    def actor(self) -> str:
        """How the audit log names this peer: `agent:ID`, `operator:NAME`, `enrol:enrol`."""
        return f"{self.role}:{self.name}"


@dataclass(eq=False)
class Login:
    """One logged-in SSH connection, as access control and the remote relay hold it.

    Compared and hashed by identity: an agent may hold two connections at once (one being
    replaced), each a Login of its own.
    """

    peer: Peer
    ssh: asyncssh.SSHServerConnection
    access_version: int  # the access guard's version when this login's records were read
    order: int  # agents: which of an agent's logins came last

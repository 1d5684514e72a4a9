"""Enrolment tokens: `EST1.<id>.<secret>.<hub key fingerprint>[.<hub address>]`.

The fingerprint lets an agent pin the hub's host key from its very first connection (as
`kubeadm join` does with its CA hash); the hub keeps only a hash of the secret. The agent
parses the same format in `agent/enrol.py` (it may not import the hub); a test checks that
both sides agree.
"""

from __future__ import annotations

import base64

PREFIX = "EST1"


def make_token(token_id: str, secret: str, host_key_fingerprint: str,
               hub_address: str | None = None) -> str:
    fp = host_key_fingerprint.removeprefix("SHA256:")
    parts = [PREFIX, token_id, secret, fp]
    if hub_address:
        parts.append(base64.urlsafe_b64encode(hub_address.encode()).decode().rstrip("="))
    return ".".join(parts)


def split_token(token: str) -> tuple[str, str, str]:
    """(token id, secret, host key fingerprint) of a token.

    Raises:
        ValueError: not a token of this format.
    """
    parts = token.strip().split(".")
    if len(parts) not in (4, 5) or parts[0] != PREFIX or not all(parts[1:4]):
        raise ValueError("not an Estate enrolment token (EST1.<id>.<secret>.<fingerprint>)")
    return parts[1], parts[2], f"SHA256:{parts[3]}"

"""Enrolment tokens: `EST1.<id>.<secret>.<hub key fingerprints>[.<hub address>]`.

The fingerprint lets an agent pin the hub's host key from its very first connection (as
`kubeadm join` does with its CA hash); the hub keeps only a hash of the secret. During a
rotation of the hub's key a token names two, comma-separated: the key being retired, then the
key rotated to (`_rotation.py`); the agent accepts a hub presenting either. The agent parses
the same format in `agent/enrol.py` (it may not import the hub); a test checks that both
sides agree.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

PREFIX = "EST1"
FINGERPRINT_SEPARATOR = ","
# The current key and the next (or previous) one: a rotation has no third.
MAX_FINGERPRINTS = 2


def make_token(token_id: str, secret: str, host_key_fingerprints: str | Sequence[str],
               hub_address: str | None = None) -> str:
    if isinstance(host_key_fingerprints, str):
        host_key_fingerprints = (host_key_fingerprints,)
    fps = FINGERPRINT_SEPARATOR.join(fp.removeprefix("SHA256:") for fp in host_key_fingerprints)
    parts = [PREFIX, token_id, secret, fps]
    if hub_address:
        parts.append(base64.urlsafe_b64encode(hub_address.encode()).decode().rstrip("="))
    return ".".join(parts)


def split_token(token: str) -> tuple[str, str, tuple[str, ...]]:
    """(token id, secret, host key fingerprints) of a token.

    Raises:
        ValueError: not a token of this format.
    """
    parts = token.strip().split(".")
    if len(parts) not in (4, 5) or parts[0] != PREFIX or not all(parts[1:4]):
        raise ValueError("not an Estate enrolment token (EST1.<id>.<secret>.<fingerprint>)")
    fps = parts[3].split(FINGERPRINT_SEPARATOR)
    if len(fps) > MAX_FINGERPRINTS or not all(fps) or len(set(fps)) != len(fps):
        raise ValueError("an Estate enrolment token names one or two distinct hub keys")
    return parts[1], parts[2], tuple(f"SHA256:{fp}" for fp in fps)

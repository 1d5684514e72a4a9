"""`estate-enrol v1`: a new agent trades an enrolment token for an agent id, with the key it
logged in with."""

from __future__ import annotations

import json
import logging

import asyncssh

from estate.inventory.hub import _tokens
from estate.inventory.hub._commands.base import BodyCommand
from estate.inventory.protocol import ENROL_COMMAND, MAX_ENROL_BYTES, ChannelExit
from estate.inventory.store import EnrolError

log = logging.getLogger("estate.hub")


class EnrolCommand(BodyCommand):
    command = ENROL_COMMAND
    limit = MAX_ENROL_BYTES

    async def run(self, body: bytes) -> None:
        ctx, channel = self.ctx, self.channel
        try:
            request = json.loads(body.decode("utf-8"))
            token, public_key = request["token"], request["public_key"]
            hostname = request.get("hostname")
            if not all(isinstance(v, str) for v in (token, public_key)) or \
                    not isinstance(hostname, (str, type(None))):
                raise TypeError
            token_id, secret, token_fps = _tokens.split_token(token)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            channel.fail("bad_request",
                         'expected {"token": "EST1...", "public_key": "ssh-ed25519 ...", '
                         '"hostname": ...}')
            return
        if ctx.fingerprint not in token_fps:  # one of two during a rotation of the hub key
            channel.fail("token_wrong_hub", "this token was issued by "
                         "another hub (its host key does not match)")
            return
        try:
            offered = asyncssh.import_public_key(public_key)
        except (asyncssh.KeyImportError, ValueError):
            offered = None
        key = ctx.peer.key
        if offered is None or \
                offered.get_fingerprint("sha256") != key.get_fingerprint("sha256"):
            channel.fail("key_mismatch", "public_key must be the key this "
                                                           "connection logged in with")
            return
        try:
            result = await ctx.db(
                ctx.store.enrol, token_id, secret,
                key.export_public_key("openssh").decode().strip(),
                key.get_fingerprint("sha256"), (hostname or "")[:255] or None, False)
        except EnrolError as exc:
            log.warning("conn %s enrol refused: %s", ctx.peer.address, exc.code)
            # Coalesced: a flood of refused enrolments writes a row a minute, not 500 a second.
            ctx.audit.record(ctx.peer.source, "enrol", "enrol_refused",
                             token_id, {"code": exc.code,
                                        "key": key.get_fingerprint("sha256"),
                                        "hostname": (hostname or "")[:255] or None})
            channel.fail(exc.code, exc.message)
            return
        log.info("enrolled %s (%s/%s) key %s", result.agent_id, result.agency, result.site,
                 key.get_fingerprint("sha256"))
        channel.finish(ChannelExit.OK, {"status": "enrolled", **result.as_dict()})

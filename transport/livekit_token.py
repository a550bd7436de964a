"""Mint LiveKit access tokens locally from an API key and secret (``livekit-api``).

Tokens never leave this module in logs: callers hand them straight to ``Room.connect``.
"""

from __future__ import annotations

import datetime
import warnings

from livekit import api

from core.errors import ConfigError

__all__ = ["mint_token", "mint_worker_token"]

DEFAULT_TTL = datetime.timedelta(hours=6)
WORKER_TTL = datetime.timedelta(minutes=10)  # only the agent endpoint's handshake reads it


def mint_token(api_key: str, api_secret: str, *, room: str, identity: str, name: str | None = None,
               agent: bool = False, dispatch_agent: str | None = None, dispatch_metadata: str = "",
               ttl: datetime.timedelta = DEFAULT_TTL, metadata: str = "") -> str:
    """A JWT that lets ``identity`` join ``room``, publish and subscribe.

    ``agent`` marks the participant kind as agent, so other bridges (and this one) can tell it from a caller,
    and lets it set its own attributes.
    ``dispatch_agent`` adds a ``RoomAgentDispatch`` to the room configuration: when this token creates the room,
    LiveKit dispatches that agent name into it (explicit dispatch).
    """
    if not api_key or not api_secret:
        raise ConfigError("LiveKit API key and secret must both be set")
    if not room or not identity:
        raise ConfigError("a LiveKit token needs a room and an identity")
    # An agent publishes its own state as participant attributes (``lk.agent.state``): that needs
    # canUpdateOwnMetadata, which LiveKit's own job tokens for dispatched agents also carry.
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                             can_publish_data=True, agent=agent or None, can_update_own_metadata=agent or None)
    token = (api.AccessToken(api_key, api_secret).with_identity(identity).with_name(name or identity)
             .with_grants(grants).with_ttl(ttl))
    if agent:
        token = token.with_kind("agent")
    if metadata:
        token = token.with_metadata(metadata)
    if dispatch_agent:
        token = token.with_room_config(api.RoomConfiguration(
            agents=[api.RoomAgentDispatch(agent_name=dispatch_agent, metadata=dispatch_metadata)]))
    return _signed(token)


def mint_worker_token(api_key: str, api_secret: str) -> str:
    """The bearer token of an agent worker's ``/agent`` connection: the agent grant alone (the server's
    handler checks ``claims.video.agent`` and nothing else)."""
    return _signed(api.AccessToken(api_key, api_secret).with_grants(api.VideoGrants(agent=True))
                   .with_ttl(WORKER_TTL))


def _signed(token: api.AccessToken) -> str:
    with warnings.catch_warnings():
        # ``livekit-server --dev`` uses the 6-byte secret "secret"; PyJWT warns about it on every call.
        warnings.filterwarnings("ignore", message=".*HMAC key.*")
        return token.to_jwt()

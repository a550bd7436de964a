"""The two edges of the bridge and the session that wires them: the public embedding API.

    from transport import BridgeSession, SessionConfig, EngineSettings, mint_token

    session = BridgeSession(SessionConfig(livekit_url=url, livekit_token=token,
                                          engine=EngineSettings(api_key=key, agent_id=engine_id)))
    await session.start()
    async for event in session.events(): ...
    await session.stop()

The library installs no signal handlers and configures no logging; many sessions share one event loop.
"""

from core.downlink import DownlinkConfig
from transport.engine_client import ConnectionState, EngineClient, InitiationData
from transport.livekit_token import mint_token
from transport.session import BridgeSession, EngineSettings, SessionConfig, SessionEvent, SessionState, serve

__all__ = [
    "BridgeSession",
    "ConnectionState",
    "DownlinkConfig",
    "EngineClient",
    "EngineSettings",
    "InitiationData",
    "SessionConfig",
    "SessionEvent",
    "SessionState",
    "mint_token",
    "serve",
]

"""A dead worker process's calls, ended and handed to LiveKit again (the supervisor's server-API side).

The dead process cannot end its calls, so the supervisor does: it removes each of the child's agent
participants from its room through the server API, which tells the caller at once that the agent left (rather
than after the server's ICE timeout), and creates a fresh dispatch for every room someone is still in:
livekit-server 1.13.5 does not dispatch a room again when its worker disappears (tests/test_cluster.py shows
both halves). Every failure here is logged and skipped: the room may have closed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServerApi", "end_calls"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerApi:
    """Where and how to reach the server API; ``redispatch`` False only removes the agents."""

    http_url: str
    api_key: str
    api_secret: str = field(repr=False)
    redispatch: bool = True

    @property
    def usable(self) -> bool:
        return bool(self.http_url and self.api_key and self.api_secret)


async def end_calls(server: ServerApi, index: int, jobs: list[dict[str, str]]) -> int:
    """End dead child ``index``'s ``jobs`` (its last status's list); returns how many were dispatched again.

    For each job: remove its agent participant; then, if someone is still in the room, create a new dispatch of
    the same agent with the same metadata (LiveKit assigns it to any worker with room for it, on any node) and
    delete the dead one.
    """
    if not jobs or not server.usable:
        return 0
    from livekit import api

    lkapi = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
    try:
        done = await asyncio.gather(*(_end_call(lkapi, server, index, job) for job in jobs))
    finally:
        await lkapi.aclose()
    return sum(done)


async def _end_call(lkapi: Any, server: ServerApi, index: int, job: dict[str, str]) -> bool:
    from livekit import api

    room, job_id = job.get("room", ""), job.get("job", "")
    try:
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=job["identity"]))
        log.info("job %s (room %r) of dead worker process %d: agent removed from the room", job_id, room, index)
    except Exception as exc:  # already gone is the usual reason
        log.info("job %s (room %r): agent not removed (%s)", job_id, room, type(exc).__name__)
    if not server.redispatch or not job.get("agent"):
        return False
    dispatched = False
    try:
        people = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        if not any(p.kind != api.ParticipantInfo.Kind.AGENT for p in people.participants):
            log.info("job %s: room %r is empty, not dispatched again", job_id, room)
            return False
        old = [d for d in await lkapi.agent_dispatch.list_dispatch(room) if d.id == job.get("dispatch")]
        metadata = old[0].metadata if old else ""
        fresh = await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            room=room, agent_name=job["agent"], metadata=metadata))
        dispatched = True
        log.info("job %s (room %r): dispatched again as %s", job_id, room, fresh.id)
        if old:
            await lkapi.agent_dispatch.delete_dispatch(old[0].id, room)
    except Exception as exc:  # the room may have closed meanwhile
        log.warning("job %s (room %r): could not dispatch the agent again: %s", job_id, room,
                    type(exc).__name__)
    return dispatched

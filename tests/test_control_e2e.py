"""First message, overrides and continuity end to end: a real bridge session on the real livekit-server, the
emulator as the engine, a caller that listens. Asserts on what the engine received and said and what the caller
heard (issue 14, part B)."""

from __future__ import annotations

import asyncio

import pytest

import runner
from core.errors import EngineError
from emulator import Emulator
from scripts.caller import RATE
from scripts.livekit_server import LiveKitServer
from tests.fault_helpers import LOUD, Rig, Scenario, loud_seconds, turn, until
from tests.test_faults import loud_between
from transport import AgentResponse, SessionState
from transport.continuity import CONTEXT_ID
from transport.control import NoConversation
from transport.engine_protocol import InitiationData
from transport.init_options import StartOptions

pytestmark = pytest.mark.livekit


def allow_first_message(emu: Emulator) -> None:
    """What ``python -m transport.engine_admin allow-overrides --first-message`` does to a real engine."""
    agent = emu.agents.get(emu.config.agent_id)
    assert agent is not None
    agent.patch_agent({"platform_settings": {"overrides": {"conversation_config_override": {
        "agent": {"first_message": True}}}}})


def responses(rig: Rig, text: str) -> int:
    return sum(1 for e in rig.of(AgentResponse) if e.text == text and e.corrected_from is None)


async def test_the_first_message_the_engine_spoke_came_from_the_command_line(livekit_server: LiveKitServer) -> None:
    args = runner.parse_args(["--room", "x", "--first-message", "Hello {{caller}}, you are through to the bridge.",
                              "--dynamic-var", "caller=Ada"])
    said = "Hello Ada, you are through to the bridge."
    async with Scenario("control", "first message from the command line", record_row=False) as sc:
        rig = await sc.rig(livekit_server, start=False, init=runner.start_options(args).apply(InitiationData()),
                           session={"start_when": "first_caller"})
        allow_first_message(rig.emu)
        await rig.session.start()
        await rig.caller("alice")
        conversation = await rig.emu.next_conversation()
        reply = await conversation.next_reply()
        assert conversation.init is not None and conversation.init.dynamic_variables == {"caller": "Ada"}
        assert (conversation.first_message, reply.text, reply.utterance) == (said, said, None)
        await conversation.wait_for(lambda: reply.end_ns is not None, 15)
        assert reply.start_ns is not None
        heard = rig.heard("alice")
        await until(lambda: heard.first_loud_after(reply.start_ns or 0, LOUD) is not None, 15,
                    "alice to hear the first message")
        await asyncio.sleep(reply.duration_ns / 1e9 + 0.5)
        # Speech is loud only part of the time: compare with the loud share of what the engine sent.
        spoken_s = loud_seconds(reply.samples, reply.rate)
        heard_s = loud_seconds(heard.since(reply.start_ns), RATE)
        assert heard_s > 0.6 * spoken_s, f"alice heard {heard_s:.2f} s of {spoken_s:.2f} s loud first message"
        assert responses(rig, said) == 1
        sc.happened(f"the engine spoke {said!r} ({spoken_s:.1f} s loud); alice heard {heard_s:.1f} s of it loud")


async def test_an_override_the_engine_does_not_allow_is_a_final_plain_error(livekit_server: LiveKitServer) -> None:
    init = StartOptions(first_message="Hi from the bridge").apply(InitiationData())
    async with Scenario("control", "override not allowed", record_row=False) as sc:
        rig = await sc.rig(livekit_server, start=False, init=init)
        with pytest.raises(EngineError) as info:
            await rig.session.start()
        message = str(info.value)
        assert info.value.close_code == 1008
        assert "override_error" in message and "agent.first_message" in message and "allow-overrides" in message
        await asyncio.sleep(1.0)
        assert len(rig.emu.conversations) == 1  # final: the same init is not sent again
        assert rig.session.state is SessionState.STOPPED
        sc.happened(f"start() raised: {message}")


async def test_after_a_reconnect_the_agent_knows_the_call_and_its_own_greeting_is_not_heard_again(
        livekit_server: LiveKitServer) -> None:
    """No first-message override: the agent greets every new conversation by itself; the bridge drops the
    reconnected conversation's greeting and hands over the transcript."""
    greeting = "Welcome to the emulated engine."
    async with Scenario("control", "continuity, greeting dropped", record_row=False) as sc:
        rig = await sc.rig(livekit_server, start=False)
        agent = rig.emu.agents.get(rig.emu.config.agent_id)
        assert agent is not None
        agent.patch_agent({"conversation_config": {"agent": {"first_message": greeting}}})
        await rig.session.start()
        first = await rig.emu.next_conversation()
        await rig.caller("alice")
        hello = await first.next_reply()
        await first.wait_for(lambda: hello.end_ns is not None, 15)
        await asyncio.sleep(hello.duration_ns / 1e9)
        before = await turn(rig, "alice", first, 300.0)
        await until(lambda: responses(rig, before.reply.text) == 1, 10, "the bridge to get the reply's text")
        await asyncio.sleep(0.5)

        first.drop()
        second = await rig.emu.next_conversation(timeout=15)
        again = await second.next_reply(timeout=15)
        assert (second.first_message, again.text, again.utterance) == (greeting, greeting, None)
        await second.wait_for(lambda: again.end_ns is not None, 15)
        assert again.start_ns is not None and again.end_ns is not None
        await asyncio.sleep(again.duration_ns / 1e9 + 0.5)

        # The new conversation got the call so far, once, right after it started.
        (update,) = second.contextual_updates
        assert update.context_id == CONTEXT_ID
        assert f"Agent: {greeting}" in update.text and f"Agent: {before.reply.text}" in update.text
        assert "User: [" in update.text  # the emulator's transcript of alice's words
        first_in = next(r for r in second.received() if r.type != "conversation_initiation_client_data")
        assert first_in.type == "contextual_update"
        # Its greeting never reached the caller or the room.
        kept = rig.session.stats(stages=False).continuity
        assert kept is not None and kept.handovers == 1 and kept.transcript_chars > 0
        assert kept.greeting_events_dropped >= 2  # its text and its audio
        assert responses(rig, greeting) == 1
        assert loud_between(rig, "alice", again.start_ns, again.end_ns + again.duration_ns + 300_000_000) == 0.0

        # The next reply shows the agent knows the handed-over context.
        after = await turn(rig, "alice", second, 420.0)
        assert after.heard_loud_s > 0.3
        assert before.reply.text in after.reply.text and "in context" in after.reply.text
        await until(lambda: responses(rig, after.reply.text) == 1, 10, "the bridge to get the reply's text")
        sc.happened(f"handed over {len(update.text)} characters; {rig.session.continuity.greeting_events_dropped} "
                    f"greeting events dropped; next reply: {after.reply.text!r}")


async def test_with_the_first_message_override_a_reconnect_asks_for_no_greeting(
        livekit_server: LiveKitServer) -> None:
    greeting = "Hi, this is the bridge speaking."
    init = StartOptions(first_message=greeting).apply(InitiationData())
    async with Scenario("control", "continuity, no greeting asked", record_row=False) as sc:
        rig = await sc.rig(livekit_server, start=False, init=init)
        allow_first_message(rig.emu)
        await rig.session.start()
        first = await rig.emu.next_conversation()
        await rig.caller("alice")
        hello = await first.next_reply()
        assert hello.text == greeting
        await first.wait_for(lambda: hello.end_ns is not None, 15)
        await asyncio.sleep(hello.duration_ns / 1e9)
        before = await turn(rig, "alice", first, 300.0)
        await asyncio.sleep(0.5)

        first.drop()
        second = await rig.emu.next_conversation(timeout=15)
        await second.wait_for(lambda: bool(second.contextual_updates), 15)
        assert second.init is not None and second.init.overrides == {"agent": {"first_message": ""}}
        assert f"Agent: {greeting}" in second.contextual_updates[0].text
        assert f"Agent: {before.reply.text}" in second.contextual_updates[0].text
        await asyncio.sleep(1.5)
        assert second.replies == [] and second.first_message is None  # nobody greeted
        after = await turn(rig, "alice", second, 420.0)
        assert after.heard_loud_s > 0.3 and before.reply.text in after.reply.text
        assert rig.session.continuity.greeting_events_dropped == 0
        sc.happened("the reconnect's init asked for first_message ''; no greeting; transcript handed over")


async def test_the_public_conversation_controls_reach_the_engine(livekit_server: LiveKitServer) -> None:
    async with Scenario("control", "conversation controls", record_row=False) as sc:
        rig = await sc.rig(livekit_server, start=False, session={"start_when": "first_caller"}, reply_mode="tone")
        with pytest.raises(NoConversation, match="not started yet"):
            rig.session.user_message("too early")
        await rig.session.start()
        with pytest.raises(NoConversation):  # in the room, but no caller yet: no conversation
            rig.session.contextual_update("still too early")
        await rig.caller("alice")
        conversation = await rig.emu.next_conversation()
        await until(lambda: rig.session.engine is not None and rig.session.engine.ready, 15, "the conversation")
        assert rig.session.contextual_update("The caller's order 4711 shipped today.", context_id="order")
        assert rig.session.user_activity()
        assert rig.session.user_message("Where is my order?")
        reply = await conversation.next_reply(timeout=15)
        assert [(u.text, u.context_id) for u in conversation.contextual_updates] == [
            ("The caller's order 4711 shipped today.", "order")]
        assert conversation.user_messages == ["Where is my order?"]
        assert "order 4711 shipped today" in reply.text
        await until(lambda: responses(rig, reply.text) == 1, 10, "the bridge to get the reply's text")
        assert ("user", "Where is my order?") in rig.session.continuity.entries
        kinds = [r.type for r in conversation.received() if r.type not in ("user_audio_chunk", "pong")]
        assert kinds[1:4] == ["contextual_update", "user_activity", "user_message"]
        await rig.session.stop()
        with pytest.raises(NoConversation, match="ended"):
            rig.session.user_activity()
        sc.happened(f"contextual_update, user_activity, user_message reached the engine; reply: {reply.text!r}")

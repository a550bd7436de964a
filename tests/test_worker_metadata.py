"""A worker's job takes its first message and dynamic variables from the dispatch metadata; bad metadata fails
that job with a clear error and the worker goes on (the runner's job runner, a real livekit-server, the
emulator as the engine)."""

from __future__ import annotations

import json
import logging

import pytest

import runner
from emulator import Emulator, EmulatorConfig
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import running_worker, unique, wait_for
from tests.test_worker import caller, config
from transport.config import EngineSettings, LiveKitTarget

pytestmark = pytest.mark.livekit


async def test_dispatch_metadata_sets_the_first_message_and_bad_metadata_fails_only_its_job(
        livekit_server: LiveKitServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    name = unique("meta")
    livekit = LiveKitTarget(livekit_server.url, livekit_server.api_key, livekit_server.api_secret)
    async with Emulator(EmulatorConfig(reply_mode="tone", ping_interval_s=None)) as emu:
        agent = emu.agents.get(emu.config.agent_id)
        assert agent is not None
        agent.patch_agent({"platform_settings": {"overrides": {"conversation_config_override": {
            "agent": {"first_message": True}}}}})
        engine = EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)
        args = runner.parse_args(["--worker", "--identity", "bridge-agent", "--linger", "0"])
        job = runner.job_runner(args, livekit, engine.with_options(runner.start_options(args)))
        async with running_worker(config(livekit_server, name), job) as (worker, _):
            async with caller(livekit_server, unique("room"), name, metadata='{"first_message": 5}'):
                await wait_for(lambda: worker.stats().jobs_failed == 1)
            assert "dispatch metadata: first_message must be a string" in caplog.text
            assert worker.stats().registered and emu.conversations == []

            metadata = json.dumps({"first_message": "Hello {{who}}, this came with the dispatch.",
                                   "dynamic_variables": {"who": "Bo"}})
            async with caller(livekit_server, unique("room"), name, metadata=metadata):
                conversation = await emu.next_conversation(timeout=20)
                reply = await conversation.next_reply(timeout=20)
                assert reply.text == conversation.first_message == "Hello Bo, this came with the dispatch."
                assert conversation.init is not None and conversation.init.dynamic_variables == {"who": "Bo"}
            assert worker.stats().jobs_failed == 1

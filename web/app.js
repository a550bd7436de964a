// The bridge's browser client: join a LiveKit room with the microphone, play the agent, show captions.
//
// Captions follow LiveKit's transcription conventions (livekit/client-sdk-js src/room/attribute-typings.ts,
// livekit/agents voice/room_io/_output.py): text streams on topic "lk.transcription" whose sender is the
// speaker, with attributes "lk.segment_id" (one id per utterance; interim updates repeat it),
// "lk.transcription_final" ("true"/"false", possibly only in the stream's trailer) and
// "lk.transcribed_track_id". Older publishers use transcription packets, surfaced by the SDK as
// RoomEvent.TranscriptionReceived; both feed the same list, keyed by segment id.
//
// The agent's state is the agent participant's attribute "lk.agent.state" (initializing / listening / thinking /
// speaking, as LiveKit agents publish it and components-js useVoiceAssistant reads it); the bridge adds the
// latest turn's latencies as JSON in "lk.bridge.turn". See watchAgentState below.
// Client tools and chat (see registerClientTools / setupChat below): the page offers the agent one tool,
// "set_theme", as a LiveKit RPC method; the bridge forwards the engine's client_tool_call for it to this
// participant and returns the answer as the tool's result. Chat messages go out as text streams on topic
// "lk.chat", which the bridge hands to the engine as user messages.
//
// Everything the page knows is mirrored in window.bridgeState so tests (and curious users) can read it.
(() => {
  'use strict';
  const LK = window.LivekitClient;
  const { Room, RoomEvent, Track, ConnectionState } = LK;
  const TOPIC = 'lk.transcription';
  const ATTR_SEGMENT = 'lk.segment_id';
  const ATTR_FINAL = 'lk.transcription_final';
  const LOUD_RMS = 0.02; // about -34 dBFS: speech or a tone, not comfort noise

  const $ = (id) => document.getElementById(id);
  const state = {
    connection: 'disconnected',
    room: null,
    identity: null,
    agentIdentity: null,
    micPublished: false,
    agentAudioPlaying: false,
    agentAudio: { rms: 0, peakHz: 0, loudMs: 0 },
    captions: [],
    error: null,
    agentState: null, // the agent's lk.agent.state, and every change seen, oldest first
    agentStates: [],
    agentTurn: null, // the agent's lk.bridge.turn, parsed
    theme: 'light',
    toolCalls: [], // { method, caller, params, result, error } for every RPC the agent made
    chat: [], // { text, sentAt, error } for every message sent
  };
  window.bridgeState = state;

  let room = null;
  let audioContext = null;
  let meter = null;

  const randomId = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 10)}`;

  function render() {
    $('connection').textContent = state.connection;
    $('room').textContent = state.room ? `${state.room} (you are ${state.identity})` : '–';
    $('agent').textContent = state.agentIdentity || 'not in the room';
    $('agent-audio-state').textContent = state.agentAudioPlaying
      ? `playing (${Math.round(state.agentAudio.peakHz)} Hz peak)` : 'silent';
    $('join').disabled = state.connection !== 'disconnected';
    $('room-input').disabled = state.connection !== 'disconnected';
    $('leave').disabled = state.connection === 'disconnected';
    $('error').hidden = !state.error;
    $('error').textContent = state.error || '';
    const list = $('captions');
    list.replaceChildren(...state.captions.map((c) => {
      const li = document.createElement('li');
      li.className = `${c.role}${c.final ? '' : ' interim'}`;
      li.dataset.segment = c.id;
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = c.role === 'agent' ? 'Agent' : c.role === 'user' ? 'You' : c.speaker;
      li.append(who, document.createTextNode(c.text));
      return li;
    }));
  }

  function roleOf(identity) {
    if (identity && identity === state.identity) return 'user';
    const p = room && room.remoteParticipants.get(identity);
    if ((p && p.isAgent) || identity === state.agentIdentity) return 'agent';
    return 'other';
  }

  // A caption can arrive before its sender's participant info, so roles are settled again as people join.
  function refreshRoles() {
    for (const c of state.captions) c.role = roleOf(c.speaker);
    render();
  }

  function upsertCaption(id, speaker, text, final, source) {
    const existing = state.captions.find((c) => c.id === id);
    if (existing) {
      Object.assign(existing, { text, final: final || existing.final, source, role: roleOf(speaker) });
    } else {
      state.captions.push({ id, speaker, role: roleOf(speaker), text, final, source, at: Date.now() });
    }
    render();
  }

  const isFinal = (attrs) => attrs[ATTR_FINAL] === 'true' || attrs[ATTR_FINAL] === true;

  async function onTranscriptStream(reader, participantInfo) {
    const speaker = participantInfo.identity;
    const id = (reader.info.attributes || {})[ATTR_SEGMENT] || reader.info.id;
    // One stream carries either the growing text of a segment (agent replies, delta chunks) or one full
    // interim/final version of it (user transcripts): accumulate this stream and replace the segment's text.
    let text = '';
    try {
      for await (const chunk of reader) {
        text += chunk;
        upsertCaption(id, speaker, text, false, 'text-stream');
      }
    } catch (err) {
      console.warn('transcription stream ended abnormally', err);
    }
    upsertCaption(id, speaker, text, isFinal(reader.info.attributes || {}), 'text-stream');
  }

  function onLegacyTranscription(segments, participant) {
    const speaker = participant ? participant.identity : 'unknown';
    for (const seg of segments) upsertCaption(seg.id, speaker, seg.text, !!seg.final, 'transcription');
  }

  // Measures what actually plays: level and dominant frequency of the agent's track, through Web Audio.
  function startMeter(track) {
    stopMeter();
    if (!audioContext) return;
    const source = audioContext.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
    const analyser = audioContext.createAnalyser();
    analyser.fftSize = 8192;
    source.connect(analyser);
    const time = new Float32Array(analyser.fftSize);
    const freq = new Float32Array(analyser.frequencyBinCount);
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      analyser.getFloatTimeDomainData(time);
      let sum = 0;
      for (const v of time) sum += v * v;
      const rms = Math.sqrt(sum / time.length);
      analyser.getFloatFrequencyData(freq);
      let peak = 0;
      for (let i = 1; i < freq.length; i += 1) if (freq[i] > freq[peak]) peak = i;
      const audio = state.agentAudio;
      audio.rms = rms;
      audio.peakHz = (peak * audioContext.sampleRate) / analyser.fftSize;
      if (rms > LOUD_RMS) audio.loudMs += now - last;
      last = now;
      state.agentAudioPlaying = rms > LOUD_RMS && !$('agent-audio').paused;
      render();
    }, 200);
    meter = { source, timer };
  }

  function stopMeter() {
    if (!meter) return;
    clearInterval(meter.timer);
    meter.source.disconnect();
    meter = null;
    state.agentAudioPlaying = false;
  }

  function onTrackSubscribed(track, _publication, participant) {
    if (track.kind !== Track.Kind.Audio || !participant.isAgent) return;
    state.agentIdentity = participant.identity;
    refreshRoles();
    // Chrome only feeds a remote WebRTC track to Web Audio while a media element plays it, so attach first.
    track.attach($('agent-audio'));
    startMeter(track);
    render();
  }

  function onTrackUnsubscribed(track, _publication, participant) {
    if (track.kind !== Track.Kind.Audio || !participant.isAgent) return;
    track.detach($('agent-audio'));
    stopMeter();
    render();
  }

  // --- Agent state (lk.agent.state) and turn figures (lk.bridge.turn) -------------------------------------
  const ATTR_AGENT_STATE = 'lk.agent.state';
  const ATTR_TURN = 'lk.bridge.turn';

  function renderAgentState() {
    $('agent-state').textContent = state.agentState || '–';
    $('agent-state').dataset.state = state.agentState || '';
    const turn = state.agentTurn;
    const parts = [];
    if (turn && turn.reply_ms !== undefined) parts.push(`reply ${Math.round(turn.reply_ms)} ms after you stopped`);
    if (turn && turn.interruption_ms !== undefined) {
      parts.push(`interrupted after ${Math.round(turn.played_ms || 0)} ms, silent ${turn.interruption_ms} ms later`);
    }
    $('agent-turn').textContent = parts.length ? `turn ${turn.turn}: ${parts.join('; ')}` : '–';
  }

  function takeAgentAttributes(attributes, participant) {
    if (!participant || !participant.isAgent) return;
    const value = attributes[ATTR_AGENT_STATE];
    if (value !== undefined && value !== state.agentState) {
      state.agentState = value;
      state.agentStates.push({ state: value, at: performance.now() });
    }
    if (attributes[ATTR_TURN] !== undefined) {
      try { state.agentTurn = JSON.parse(attributes[ATTR_TURN]); } catch (err) { console.warn('bad lk.bridge.turn', err); }
    }
    renderAgentState();
  }

  // Attributes a participant had when we met it come with it; later ones as ParticipantAttributesChanged.
  function watchAgentState(lkRoom) {
    Object.assign(state, { agentState: null, agentStates: [], agentTurn: null });
    lkRoom.on(RoomEvent.ParticipantAttributesChanged, takeAgentAttributes);
    lkRoom.on(RoomEvent.ParticipantConnected, (p) => takeAgentAttributes(p.attributes || {}, p));
    lkRoom.on(RoomEvent.Connected, () => {
      for (const p of lkRoom.remoteParticipants.values()) takeAgentAttributes(p.attributes || {}, p);
    });
    lkRoom.on(RoomEvent.ParticipantDisconnected, (p) => {
      if (p.isAgent) { state.agentState = null; renderAgentState(); }
    });
    renderAgentState();
  }

  async function join() {
    state.error = null;
    // The room is the one shown (and editable) in the form, never taken from the link behind the user's back;
    // the identity is the token server's to choose (an open --dev server accepts ?identity= from the link).
    const roomName = $('room-input').value.trim();
    if (!roomName) { state.error = 'choose a room to join'; render(); return; }
    const identity = new URLSearchParams(window.location.search).get('identity');
    const accessKey = $('access-key').value;
    // Created inside the click handler: browsers only let a user gesture start audio.
    audioContext = audioContext || new AudioContext();
    await audioContext.resume();
    state.connection = 'connecting';
    render();
    try {
      const headers = { 'Content-Type': 'application/json' };
      if (accessKey) headers.Authorization = `Bearer ${accessKey}`;
      const request = identity ? { room: roomName, identity } : { room: roomName };
      const response = await fetch('/token', { method: 'POST', headers, body: JSON.stringify(request) });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `token request failed (${response.status})`);
      Object.assign(state, { room: body.room, identity: body.identity, captions: [] });

      room = new Room({ adaptiveStream: true, dynacast: true });
      watchAgentState(room);
      room.on(RoomEvent.ConnectionStateChanged, (s) => { state.connection = s; render(); });
      room.on(RoomEvent.TrackSubscribed, onTrackSubscribed);
      room.on(RoomEvent.TrackUnsubscribed, onTrackUnsubscribed);
      room.on(RoomEvent.ParticipantConnected, (p) => {
        if (p.isAgent) state.agentIdentity = p.identity;
        refreshRoles();
      });
      room.on(RoomEvent.ParticipantDisconnected, (p) => {
        if (p.identity === state.agentIdentity) { state.agentIdentity = null; render(); }
      });
      room.on(RoomEvent.TranscriptionReceived, onLegacyTranscription);
      room.on(RoomEvent.AudioPlaybackStatusChanged, () => {
        $('unmute-audio').hidden = room.canPlaybackAudio;
      });
      room.on(RoomEvent.Disconnected, () => {
        stopMeter();
        state.connection = 'disconnected';
        state.agentIdentity = null;
        state.micPublished = false;
        render();
      });
      room.registerTextStreamHandler(TOPIC, onTranscriptStream);
      registerClientTools(room);
      setupChat(room);

      await room.connect(body.url, body.token);
      await room.localParticipant.setMicrophoneEnabled(true);
      state.micPublished = true;
      for (const p of room.remoteParticipants.values()) if (p.isAgent) state.agentIdentity = p.identity;
    } catch (err) {
      state.error = err && err.message ? err.message : String(err);
      if (room) await room.disconnect();
      state.connection = room ? room.state : 'disconnected';
    }
    render();
  }

  // ---- client tools: RPC methods the agent can call through the bridge ---------------------------------
  const THEMES = ['light', 'dark'];

  function registerClientTools(lkRoom) {
    // The engine's parameters arrive as the RPC payload (a JSON object); the returned string is the result.
    lkRoom.registerRpcMethod('set_theme', async (data) => {
      const call = { method: 'set_theme', caller: data.callerIdentity, params: null, result: null, error: null };
      state.toolCalls.push(call);
      try {
        call.params = JSON.parse(data.payload || '{}');
        const theme = call.params.theme;
        // An RpcError's message reaches the agent as the error result; any other exception arrives as 1500.
        if (!THEMES.includes(theme)) throw new LK.RpcError(1500, `unknown theme ${JSON.stringify(theme)}; use ${THEMES.join(' or ')}`);
        state.theme = theme;
        document.body.dataset.theme = theme;
        call.result = `The page now uses the ${theme} theme.`;
        return call.result;
      } catch (err) {
        call.error = err && err.message ? err.message : String(err);
        throw err;
      } finally {
        renderTools();
      }
    });
  }

  // ---- chat: lk.chat text streams, which the bridge hands to the engine as user messages --------------
  const CHAT_TOPIC = 'lk.chat';
  const CHAT_MAX = 2000; // the bridge sends at most this many characters of a message (ChatConfig.max_chars)

  function setupChat(lkRoom) {
    lkRoom.on(RoomEvent.ConnectionStateChanged, renderTools);
    lkRoom.on(RoomEvent.Disconnected, renderTools);
  }

  async function sendChat() {
    const input = $('chat-input');
    const text = input.value.trim();
    if (!text || !room || room.state !== ConnectionState.Connected) return;
    const entry = { text: text.slice(0, CHAT_MAX), sentAt: Date.now(), error: null };
    state.chat.push(entry);
    input.value = '';
    try {
      await room.localParticipant.sendText(entry.text, { topic: CHAT_TOPIC });
    } catch (err) {
      entry.error = err && err.message ? err.message : String(err);
    }
    renderTools();
  }

  function renderTools() {
    const connected = !!room && room.state === ConnectionState.Connected;
    $('chat-input').disabled = !connected;
    $('chat-send').disabled = !connected;
    $('theme').textContent = state.theme;
    $('chat-log').replaceChildren(...state.chat.map((m) => {
      const li = document.createElement('li');
      li.textContent = m.error ? `${m.text} (not sent: ${m.error})` : m.text;
      return li;
    }));
    $('tool-log').replaceChildren(...state.toolCalls.map((c) => {
      const li = document.createElement('li');
      li.textContent = `${c.method}(${JSON.stringify(c.params)}) → ${c.error ? `error: ${c.error}` : c.result}`;
      return li;
    }));
  }

  async function leave() {
    if (room) await room.disconnect();
  }

  // A link may suggest a room; it is shown in the form before anything is joined.
  $('room-input').value = new URLSearchParams(window.location.search).get('room') || randomId('room');
  $('join-form').addEventListener('submit', (event) => event.preventDefault());
  $('join').addEventListener('click', join);
  $('leave').addEventListener('click', leave);
  $('unmute-audio').addEventListener('click', () => room && room.startAudio());
  $('chat-form').addEventListener('submit', (event) => { event.preventDefault(); sendChat(); });
  state.connection = ConnectionState.Disconnected;
  render();
  renderTools();
})();

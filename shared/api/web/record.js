// Dictation: the microphone streamed to the live endpoint (/v1/realtime, OpenAI's Realtime
// transcription protocol) with the text shown as it is decoded; on Stop, the recording is kept
// as an ordinary job (listed, readable, downloadable). Uses app.js's upload/follow/loadJobs.
"use strict";

const RATE = 24000; // pcm16 at 24 kHz: the protocol's PCM format
let recording = null;

function base64Of(buffer) {
  let binary = "";
  const bytes = new Uint8Array(buffer);
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function wavOf(pieces) {
  const samples = pieces.reduce((n, p) => n + p.length, 0);
  const view = new DataView(new ArrayBuffer(44 + samples * 2));
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples * 2, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, RATE, true); view.setUint32(28, RATE * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples * 2, true);
  let at = 44;
  for (const piece of pieces) for (const s of piece) { view.setInt16(at, s, true); at += 2; }
  return new Blob([view.buffer], { type: "audio/wav" });
}

function showLive(event) {
  const list = $("dictation");
  let item = list.querySelector(`[data-item="${event.item_id}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.item = event.item_id;
    list.append(item);
  }
  if (event.type.endsWith(".delta")) item.textContent += event.delta || "";
  else { item.textContent = event.transcript; item.classList.add("final"); }
}

async function startRecording() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  const context = new AudioContext({ sampleRate: RATE });
  const source = context.createMediaStreamSource(stream);
  const tap = context.createScriptProcessor(4096, 1, 1);
  // This page's own origin, over ws: or wss: as the page is http: or https:.
  const url = new URL("/v1/realtime?intent=transcription", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url.href,
    ["realtime", `openai-insecure-api-key.${token}`]);
  const pieces = [];
  recording = { stream, context, tap, socket, pieces, open: 0 };
  socket.onopen = () => {
    const language = languageCode($("language").value);
    socket.send(JSON.stringify({ type: "transcription_session.update", session: {
      input_audio_format: "pcm16",
      input_audio_transcription: Object.assign({ model: "whisper-1" }, language ? { language } : {}),
      turn_detection: { type: "server_vad", silence_duration_ms: 500 },
    } }));
  };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "input_audio_buffer.committed") recording && recording.open++;
    if (/input_audio_transcription\.(delta|completed)$/.test(event.type)) showLive(event);
    if (/\.completed$|\.failed$/.test(event.type) && recording) recording.open--;
    if (event.type === "error" && event.error.code !== "input_audio_buffer_commit_empty") showMessage(event.error.message);
  };
  socket.onerror = () => showMessage(t("record.unavailable"));
  tap.onaudioprocess = (e) => {
    const samples = e.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-1, Math.min(1, samples[i])) * 0x7fff;
    pieces.push(pcm);
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64Of(pcm.buffer) }));
    }
  };
  source.connect(tap);
  tap.connect(context.destination);
}

// Stop: the last words are committed and their text awaited (a few seconds at most), then the
// recording is uploaded as a job of its own.
async function stopRecording() {
  const { stream, context, tap, socket, pieces } = recording;
  stream.getTracks().forEach((track) => track.stop());
  tap.disconnect();
  await context.close();
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  const until = Date.now() + 10000;
  while (recording.open > 0 && Date.now() < until) await new Promise((done) => setTimeout(done, 100));
  socket.close();
  recording = null;
  const form = new FormData();
  form.append("model", $("model").value === "whisper-1" ? "" : $("model").value);
  form.append("language", languageCode($("language").value));
  form.append("keep_audio", $("forget-audio").checked ? "false" : "true");
  const name = `dictation-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.wav`;
  form.append("audio", wavOf(pieces), name);
  const job = await upload(form, () => {});
  await loadJobs(true);
  const final = await follow(job.id, () => {});
  await loadJobs(true);
  if (final.status === "completed") await openReader(final.id);
}

async function toggleRecording() {
  const button = $("record");
  button.disabled = true;
  try {
    if (recording) {
      button.textContent = t("record.start");
      await stopRecording();
    } else {
      $("dictation").replaceChildren();
      showMessage("");
      await startRecording();
      button.textContent = t("record.stop");
    }
  } catch (err) {
    recording = null;
    button.textContent = t("record.start");
    fail(err);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const button = $("record");
  if (!navigator.mediaDevices || !window.WebSocket) { button.hidden = true; return; }
  button.addEventListener("click", toggleRecording);
});

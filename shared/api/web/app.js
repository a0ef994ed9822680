// whisper-api's web page: plain JavaScript against the public API, no build step.
// The token lives in sessionStorage (this tab only) and only ever travels in a header.
"use strict";

const TOKEN_KEY = "whisper-api.token";
const FORMATS = [["srt", "srt"], ["vtt", "vtt"], ["text", "txt"], ["json", "json"], ["verbose_json", "json"], ["tsv", "tsv"], ["rttm", "rttm"]];
const SPEAKER_COLOURS = 8; // .speaker-0 ... .speaker-7 in app.css
const FINAL = new Set(["completed", "failed", "canceled"]);
const $ = (id) => document.getElementById(id);
const tabAudio = new Map(); // job id -> object URL of the file uploaded in this tab
let nextCursor = null;

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body || {};
  }
}

// What each refusal means to a person; the API's own detail follows it.
function explain(status, detail, retryAfter) {
  const wait = retryAfter ? t("error.wait", { seconds: retryAfter }) : "";
  switch (status) {
    case 401: case 413: case 415: case 422: case 429: case 0:
      return t(`error.${status}`, { detail, wait });
    case 503: return t("error.503", { wait: wait || t("error.shortly") });
    default: return t("error.other", { status, detail });
  }
}

function toError(status, text, retryAfter) {
  let body = {};
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  const detail = body.detail || (body.error && body.error.message) || text || "";
  return new ApiError(status, explain(status, detail, retryAfter), body);
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function fail(err) {
  showMessage(err.message || String(err));
  if (err.status === 401) signOut(false);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && options.auth !== false) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new ApiError(0, explain(0, String(err)));
  }
  if (!resp.ok) throw toError(resp.status, await resp.text(), resp.headers.get("Retry-After"));
  return resp;
}

// ---- sign in -------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  try {
    const resp = await api("/auth/token", {
      method: "POST", auth: false,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ api_key: key }),
    });
    sessionStorage.setItem(TOKEN_KEY, (await resp.json()).token);
    $("api-key").value = "";
    showMessage("");
    await enter();
  } catch (err) {
    showMessage(err.status === 401 ? t("key.refused") : err.message);
  }
}

function signOut(clearMessage = true) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("session").hidden = true;
  $("sign-in").hidden = false;
  if (clearMessage) showMessage("");
  $("api-key").focus();
}

async function enter() {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  await loadModels(); // first: a failed job's Retry offers these models
  await loadJobs(true);
}

async function loadModels() {
  // whisper-1 (the server's default) and the real models; OpenAI's other names are aliases.
  const listed = (await (await api("/v1/models")).json()).data;
  const models = listed.filter((m, i) => (i === 0 && m.id === "whisper-1") || m.owned_by !== "alias").map((m) => m.id);
  const select = $("model");
  select.replaceChildren(...models.map((id, i) => {
    const option = document.createElement("option");
    option.value = id;
    option.textContent = i === 0 && id === "whisper-1" ? t("model.default") : id;
    return option;
  }));
}

// ---- a new job -----------------------------------------------------------------------------

function chosenFile() {
  return $("file").files[0] || null;
}

function showFile() {
  const file = chosenFile();
  $("file-name").textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(1)} MB)` : t("file.none");
}

function upload(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/transcribe");
    xhr.setRequestHeader("Authorization", `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onload = () => (xhr.status === 202
      ? resolve(JSON.parse(xhr.responseText))
      : reject(toError(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After"))));
    xhr.onerror = () => reject(new ApiError(0, explain(0, "the upload was interrupted")));
    xhr.send(form);
  });
}

async function startJob(event) {
  event.preventDefault();
  const file = chosenFile();
  if (!file) { showMessage(t("file.first")); $("file").focus(); return; }
  const form = new FormData();
  form.append("model", $("model").value === "whisper-1" ? "" : $("model").value);
  form.append("language", languageCode($("language").value));
  form.append("task", $("task").value);
  form.append("word_timestamps", $("words").checked ? "true" : "false");
  form.append("keep_audio", $("forget-audio").checked ? "false" : "true");
  const count = $("speaker-count").value.trim();
  if ($("diarize").checked || count) form.append("diarize", "true");
  if (count) form.append("num_speakers", count);
  form.append("audio", file, file.name);
  showMessage("");
  $("start").disabled = true;
  $("progress").hidden = false;
  $("live").replaceChildren();
  setBar("job", 0, "");
  try {
    const job = await upload(form, (sent, total) => setBar("upload", sent / total,
      t("upload.sent", { sent: (sent / 1e6).toFixed(1), total: (total / 1e6).toFixed(1) })));
    setBar("upload", 1, t("upload.done"));
    tabAudio.set(job.id, URL.createObjectURL(file));
    loadJobs(true);
    const final = await follow(job.id, onJobEvent);
    if (final.status === "failed") showMessage(t("job.failed", { reason: final.error }));
    await loadJobs(true);
    if (final.status === "completed") await openReader(final.id);
  } catch (err) {
    fail(err);
  } finally {
    $("start").disabled = false;
  }
}

function setBar(name, fraction, text) {
  $(`${name}-bar`).value = fraction;
  $(`${name}-text`).textContent = text;
}

function onJobEvent(event) {
  if (event.event === "segment") {
    const item = document.createElement("li");
    item.textContent = `${clock(event.data.start)} ${event.data.text.trim()}`;
    $("live").append(item);
    return;
  }
  const data = event.data;
  const pct = Math.round((data.progress || 0) * 100);
  setBar("job", data.progress || 0, data.status === "processing" ? t("job.processing", { pct }) : t(`status.${data.status}`));
}

// Server-Sent Events read with fetch (EventSource cannot send the Authorization header),
// resumed with Last-Event-ID when the server closes a long stream; polling if it is missing.
async function follow(jobId, onEvent) {
  let last = null;
  for (;;) {
    let resp;
    try {
      const headers = { Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = last;
      resp = await api(`/transcribe/${jobId}/events`, { headers });
    } catch (err) {
      if (err.status === 401) throw err;
      return poll(jobId, onEvent);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (!event) continue;
        if (event.id) last = event.id;
        onEvent(event);
        if (event.event === "end") return event.data;
      }
    }
  }
}

function parseEvent(block) {
  const event = { event: "message", data: "", id: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const key = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (key === "event") event.event = value;
    else if (key === "data") event.data += value;
    else if (key === "id") event.id = value;
  }
  if (!event.data) return null;
  event.data = JSON.parse(event.data);
  return event;
}

async function poll(jobId, onEvent) {
  for (;;) {
    const job = await (await api(`/transcribe/${jobId}`)).json();
    if (FINAL.has(job.status)) { onEvent({ event: "end", data: job }); return job; }
    onEvent({ event: "status", data: job });
    await new Promise((done) => setTimeout(done, 1000));
  }
}

// ---- the caller's jobs ---------------------------------------------------------------------

function clock(seconds) {
  const s = Math.max(0, seconds || 0);
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", () => onClick().catch(fail));
  return b;
}

function stemOf(job) {
  return (job.filename || job.id).replace(/\.[^.]+$/, "");
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.job = job.id;
  const name = job.filename || job.id;
  const cells = [name, t(`status.${job.status}`), job.duration == null ? "–" : clock(job.duration),
    new Date(job.created_at * 1000).toLocaleString()];
  // Each cell carries its heading: below 40rem the rows are cards, labelled by CSS.
  const headings = ["th.file", "th.status", "th.audio", "th.created"];
  cells.forEach((text, i) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    cell.dataset.label = tPage(headings[i]);
    row.append(cell);
  });
  row.children[1].className = `status ${job.status}`;
  if (job.status === "failed" && job.error) {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = job.error;
    row.children[1].append(reason);
  }
  const actions = document.createElement("td");
  actions.className = "actions";
  actions.dataset.label = tPage("th.actions");
  if (job.status === "completed") {
    actions.append(button(t("action.open"), t("aria.open", { name }), () => openReader(job.id)));
    const select = document.createElement("select");
    select.setAttribute("aria-label", t("aria.format", { name }));
    select.replaceChildren(...FORMATS.map(([fmt]) => new Option(fmt, fmt)));
    actions.append(select, button(t("action.download"), t("aria.download", { name }),
      () => download(job, select.value)));
  }
  if (job.status === "failed") actions.append(...retryControls(job, name));
  if (!FINAL.has(job.status)) {
    actions.append(button(t("action.cancel"), t("aria.cancel", { name }), async () => {
      await api(`/transcribe/${job.id}/cancel`, { method: "POST" });
      await loadJobs(true);
    }));
  }
  actions.append(button(t("action.delete"), t("aria.delete", { name }), async () => {
    if (!window.confirm(t("confirm.delete", { name }))) return;
    await api(`/transcribe/${job.id}`, { method: "DELETE" });
    if ($("reader").dataset.job === job.id) closeReader();
    await loadJobs(true);
  }));
  row.append(actions);
  return row;
}

// Retry: the stored audio again, with the job's options and the model chosen beside the button.
function retryControls(job, name) {
  const model = document.createElement("select");
  model.setAttribute("aria-label", t("aria.retry-model", { name }));
  model.className = "retry-model";
  const models = [...$("model").options].map((o) => [o.value, o.textContent]);
  model.replaceChildren(...models.map(([id, text]) => new Option(text, id)));
  const wanted = job.options && job.options.model;
  if (models.some(([id]) => id === wanted)) model.value = wanted;
  return [model, button(t("action.retry"), t("aria.retry", { name }), () => retry(job, name, model.value))];
}

async function retry(job, name, model) {
  let audio;
  try {
    audio = await (await api(`/transcribe/${job.id}/audio`)).blob();
  } catch (err) {
    if (err.status === 410 || err.status === 404) { showMessage(t("retry.no-audio", { name })); return; }
    throw err;
  }
  const options = job.options || {};
  const form = new FormData();
  form.append("model", model === "whisper-1" ? "" : model);
  form.append("language", options.language || "");
  form.append("task", options.task || "transcribe");
  form.append("word_timestamps", options.word_timestamps ? "true" : "false");
  form.append("audio", audio, job.filename || "audio");
  showMessage("");
  const created = await upload(form, () => {});
  await loadJobs(true);
  await follow(created.id, () => {});
  await loadJobs(true);
}

async function loadJobs(fromStart) {
  const query = fromStart || !nextCursor ? "" : `&cursor=${encodeURIComponent(nextCursor)}`;
  const page = await (await api(`/transcribe?limit=20${query}`)).json();
  const rows = page.jobs.map(jobRow);
  if (fromStart) $("job-rows").replaceChildren(...rows); else $("job-rows").append(...rows);
  nextCursor = page.next_cursor;
  $("more").hidden = !nextCursor;
}

async function download(job, fmt) {
  const resp = await api(`/transcribe/${job.id}/result?format=${fmt}`);
  const url = URL.createObjectURL(await resp.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = `${stemOf(job)}.${FORMATS.find(([f]) => f === fmt)[1]}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- reading view --------------------------------------------------------------------------

async function audioUrl(jobId) {
  if (tabAudio.has(jobId)) return tabAudio.get(jobId);
  try {
    const url = URL.createObjectURL(await (await api(`/transcribe/${jobId}/audio`)).blob());
    tabAudio.set(jobId, url);
    return url;
  } catch (err) {
    if (err.status === 410) return null;
    throw err;
  }
}

// A diarized segment's speaker: its label (SPEAKER_01) and the name shown (the owner's, if any).
function speakerOf(segment, names) {
  if (!segment.speaker) return null;
  const label = Object.keys(names).find((l) => names[l] === segment.speaker) || segment.speaker;
  const number = Number((label.match(/(\d+)$/) || [0, 0])[1]);
  return { label, name: segment.speaker, colour: number % SPEAKER_COLOURS };
}

function segmentItem(segment, speaker) {
  const item = document.createElement("li");
  if (speaker) {
    item.className = `speaker-${speaker.colour}`;
    item.dataset.speaker = speaker.label;
    const who = document.createElement("span");
    who.className = "speaker";
    who.textContent = speaker.name;
    item.append(who);
  }
  const seg = document.createElement("button");
  seg.type = "button";
  seg.className = "segment";
  seg.dataset.start = segment.start;
  seg.dataset.end = segment.end;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = clock(segment.start);
  const text = document.createElement("span");
  text.className = "text";
  if (segment.words && segment.words.length) {
    for (const w of segment.words) {
      const word = document.createElement("span");
      word.className = "word";
      word.dataset.start = w.start;
      word.dataset.end = w.end;
      word.textContent = w.word;
      text.append(word);
    }
  } else {
    text.textContent = segment.text.trim();
  }
  seg.append(time, " ", text);
  seg.addEventListener("click", () => {
    const player = $("player");
    player.currentTime = segment.start;
    if (player.src) player.play().catch(() => { /* no audio output: the position still moved */ });
    highlight(segment.start);
  });
  item.append(seg);
  return item;
}

async function openReader(jobId) {
  const [job, result] = await Promise.all([
    api(`/transcribe/${jobId}`).then((r) => r.json()),
    api(`/transcribe/${jobId}/result?format=json`).then((r) => r.json()),
  ]);
  const reader = $("reader");
  reader.dataset.job = jobId;
  $("reader-title").textContent = job.filename || job.id;
  const names = job.speaker_names || {};
  const speakers = result.segments.map((s) => speakerOf(s, names));
  $("transcript").replaceChildren(...result.segments.map((s, i) => segmentItem(s, speakers[i])));
  showSpeakerNames(jobId, speakers.filter(Boolean), names);
  const url = await audioUrl(jobId);
  const player = $("player");
  if (url) player.src = url; else player.removeAttribute("src");
  player.hidden = !url;
  $("no-audio").hidden = Boolean(url);
  reader.hidden = false;
  reader.scrollIntoView({ block: "start" });
  const first = $("transcript").querySelector(".segment");
  if (first) first.focus({ preventScroll: true });
}

function showSpeakerNames(jobId, speakers, names) {
  const labels = [...new Set(speakers.map((s) => s.label))].sort();
  const fields = labels.map((label) => {
    const field = document.createElement("label");
    field.className = `speaker-${speakers.find((s) => s.label === label).colour}`;
    const input = document.createElement("input");
    input.name = label;
    input.value = names[label] || "";
    input.placeholder = label;
    input.maxLength = 64;
    field.append(`${label} `, input);
    return field;
  });
  $("speaker-fields").replaceChildren(...fields);
  const form = $("speaker-names");
  form.hidden = labels.length === 0;
  form.onsubmit = async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(labels.map((l) => [l, form.elements[l].value.trim()]));
    try {
      await api(`/transcribe/${jobId}/speakers`, {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      await openReader(jobId);
    } catch (err) {
      fail(err);
    }
  };
}

function closeReader() {
  const reader = $("reader");
  $("player").pause();
  reader.hidden = true;
  delete reader.dataset.job;
}

// The segment (and word) being played is highlighted and kept in view.
function highlight(t) {
  let current = null;
  for (const seg of document.querySelectorAll("#transcript .segment")) {
    const on = t >= Number(seg.dataset.start) && t < Number(seg.dataset.end);
    seg.classList.toggle("playing", on);
    if (on) { seg.setAttribute("aria-current", "true"); current = seg; } else seg.removeAttribute("aria-current");
  }
  for (const word of document.querySelectorAll("#transcript .word")) {
    word.classList.toggle("spoken", t >= Number(word.dataset.start) && t < Number(word.dataset.end));
  }
  if (current) current.scrollIntoView({ block: "nearest" });
}

// ---- wiring --------------------------------------------------------------------------------

function wireDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) { $("file").files = e.dataTransfer.files; showFile(); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("job-form").addEventListener("submit", startJob);
  $("file").addEventListener("change", showFile);
  $("refresh").addEventListener("click", () => loadJobs(true).catch(fail));
  $("more").addEventListener("click", () => loadJobs(false).catch(fail));
  $("close-reader").addEventListener("click", closeReader);
  $("player").addEventListener("timeupdate", () => highlight($("player").currentTime));
  $("player").addEventListener("seeked", () => highlight($("player").currentTime));
  wireDrop();
  document.addEventListener("whisper-api:language", () => {
    showFile();
    if (!$("app").hidden) Promise.all([loadModels(), loadJobs(true)]).catch(fail);
  });
  if (sessionStorage.getItem(TOKEN_KEY)) enter().catch(fail); else $("api-key").focus();
});

// The console's wiring: settings, the composer (text, attachments, push-to-talk), stop, live voice,
// conversations and the service's health. Everything goes through the public API.
import { Api } from "./api.js";
import { Attachments } from "./attachments.js";
import { Microphone, concat, wav } from "./audio.js";
import { Chat } from "./chat.js";
import { Conversations } from "./conversations.js";
import { LiveVoice } from "./voice.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "chorus.apiKey";
const RECORD_RATE = 16000; // Whisper's rate
const MIN_RECORDING_S = 0.3;

const key = $("key");
key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
const getKey = () => key.value.trim();
const api = new Api(getKey);

const settings = {
  model: () => $("model").value.trim() || "chorus",
  instructions: () => $("instructions").value.trim(),
  voice: () => $("voice").value,
  speak: () => $("speak").checked,
  explain: () => $("explain").checked,
  maxTokens: () => {
    const n = Number.parseInt($("max-tokens").value, 10);
    return Number.isFinite(n) && n > 0 ? n : null;
  },
  temperature: () => {
    const t = Number.parseFloat($("temperature").value);
    return Number.isFinite(t) ? t : null;
  },
  fusion: () => {
    const modes = {};
    if ($("audio-mode").value) modes.audio = $("audio-mode").value;
    if ($("image-mode").value) modes.image = $("image-mode").value;
    return Object.keys(modes).length ? modes : null;
  },
};

const error = $("error");
function showError(message) {
  error.hidden = !message;
  error.textContent = message || "";
}

const log = $("log");
const attachments = new Attachments($("attachments"));
const conversations = new Conversations({ api, list: $("conversations"), note: $("conv-note"), log, onOpen: () => chat.clear() });
const chat = new Chat({ api, log, settings, attachments, conversations, showError, onBusy: busy });
const status = (text) => { $("voice-status").textContent = text; };
const live = new LiveVoice({ log, settings, getKey, status, showError, onChange: (on) => {
  $("live").setAttribute("aria-pressed", String(on));
  $("live").textContent = on ? "End live voice" : "Start live voice";
} });

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("talk").disabled = on;
}

// --- composer ------------------------------------------------------------------------------------

const message = $("message");
$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = message.value;
  message.value = "";
  if (!(await chat.send(text))) message.value = text;
});
message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!$("send").disabled) $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => chat.stop());

async function attach(files) {
  for (const file of files) {
    try {
      await attachments.add(file);
    } catch (err) {
      showError(err.message);
    }
  }
}
$("attach").addEventListener("click", () => $("files").click());
$("files").addEventListener("change", async (event) => {
  await attach([...event.target.files]);
  event.target.value = "";
});
const composer = $("composer");
composer.addEventListener("dragover", (event) => {
  event.preventDefault();
  composer.classList.add("dragging");
});
composer.addEventListener("dragleave", () => composer.classList.remove("dragging"));
composer.addEventListener("drop", (event) => {
  event.preventDefault();
  composer.classList.remove("dragging");
  attach([...event.dataTransfer.files]);
});
message.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files ?? [])];
  if (files.length) {
    event.preventDefault();
    attach(files);
  }
});

// --- push-to-talk: hold the button (pointer, Space or Enter), release to send ---------------------

const talk = $("talk");
let recording = null;

async function startTalking() {
  if (recording || talk.disabled) return;
  const blocks = [];
  recording = new Microphone(RECORD_RATE, (block) => blocks.push(block));
  recording.blocks = blocks;
  talk.setAttribute("aria-pressed", "true");
  talk.textContent = "Recording… release to send";
  try {
    await recording.start();
  } catch (err) {
    showError(`The microphone is not available: ${err.message}`);
    recording = null;
    resetTalk();
  }
}

async function stopTalking() {
  if (!recording) return;
  const { blocks } = recording;
  const done = recording;
  recording = null;
  resetTalk();
  await done.stop();
  const samples = concat(blocks);
  if (samples.length < RECORD_RATE * MIN_RECORDING_S) {
    showError("That recording was too short: hold the button while you speak.");
    return;
  }
  await attachments.add(new Blob([wav(samples, RECORD_RATE)], { type: "audio/wav" }), `voice-note-${new Date().toISOString().slice(11, 19)}.wav`);
  $("composer").requestSubmit();
}

function resetTalk() {
  talk.setAttribute("aria-pressed", "false");
  talk.textContent = "Hold to talk";
}

talk.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  startTalking();
});
["pointerup", "pointerleave", "pointercancel"].forEach((name) => talk.addEventListener(name, stopTalking));
talk.addEventListener("keydown", (event) => {
  if ((event.key === " " || event.key === "Enter") && !event.repeat) {
    event.preventDefault();
    startTalking();
  }
});
talk.addEventListener("keyup", (event) => {
  if (event.key === " " || event.key === "Enter") {
    event.preventDefault();
    stopTalking();
  }
});

$("live").addEventListener("click", () => (live.active ? live.stop() : live.start()));

// --- settings, conversations, health ---------------------------------------------------------------

key.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, getKey());
  loadModels();
  conversations.refresh();
});
$("new-conv").addEventListener("click", () => conversations.start());
$("menu").addEventListener("click", () => {
  const open = $("side").classList.toggle("open");
  $("menu").setAttribute("aria-expanded", String(open));
});

async function loadModels() {
  try {
    const models = await api.json("GET", "/v1/models");
    $("models").replaceChildren(...models.data.map((m) => Object.assign(document.createElement("option"), { value: m.id })));
  } catch {
    // without a valid key the list stays empty; sending shows the API's own message
  }
}

async function health() {
  const line = $("health");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    const store = body.store?.status === "ok" ? `store: ${body.store.backend}` : "no store";
    line.textContent = `Service ${body.status} · ${store}`;
    line.className = `health ${body.status === "ok" ? "ok" : "bad"}`;
    if (body.store?.status === "not_configured") conversations.disable();
  } catch (err) {
    line.textContent = `The service does not answer (${err.message})`;
    line.className = "health bad";
  }
}

health();
loadModels();
conversations.refresh();
document.body.dataset.ready = "true";

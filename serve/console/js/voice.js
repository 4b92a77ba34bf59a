// Live voice: the realtime WebSocket (/v1/realtime). The microphone streams 24 kHz PCM16 up, the
// service's VAD decides when the caller has finished, the answer streams back as text and speech,
// and speaking over it cuts it off (barge-in).
import { Microphone, PcmPlayer, fromBase64, pcm16, toBase64 } from "./audio.js";
import { MessageView } from "./view.js";

const RATE = 24000;
const SEND_EVERY = RATE / 10; // 100 ms of audio per append event
const KEY_PROTOCOL = "openai-insecure-api-key.";

export class LiveVoice {
  constructor({ log, settings, getKey, status, showError, onChange }) {
    Object.assign(this, { log, settings, getKey, status, showError, onChange });
    this.ws = null;
  }

  get active() {
    return this.ws !== null;
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/realtime?model=${encodeURIComponent(this.settings.model())}`;
    const key = this.getKey();
    const protocols = key ? ["realtime", KEY_PROTOCOL + key] : ["realtime"];
    this.opened = false;
    this.users = new Map();
    this.answers = new Map();
    this.pending = [];
    this.player = new PcmPlayer(RATE);
    this.ws = new WebSocket(url, protocols);
    this.ws.onopen = () => this.opening();
    this.ws.onmessage = (event) => this.handle(JSON.parse(event.data));
    this.ws.onclose = (event) => this.closed(event);
    this.status("Connecting the live voice channel…");
    this.onChange(true);
  }

  async opening() {
    this.opened = true;
    const session = { type: "realtime", audio: { input: { transcription: { model: "whisper-1" } }, output: { voice: this.settings.voice() } } };
    const instructions = this.settings.instructions();
    if (instructions) session.instructions = instructions;
    this.send({ type: "session.update", session });
    this.mic = new Microphone(RATE, (block) => this.capture(block), { processing: true });
    try {
      await this.mic.start();
      this.status("Live: speak, and pause when you are done. Speaking over an answer stops it.");
    } catch (err) {
      this.showError(`The microphone is not available: ${err.message}`);
      this.stop();
    }
  }

  capture(block) {
    this.pending.push(block);
    if (this.pending.reduce((n, b) => n + b.length, 0) < SEND_EVERY) return;
    const blocks = this.pending;
    this.pending = [];
    const samples = new Float32Array(blocks.reduce((n, b) => n + b.length, 0));
    let at = 0;
    blocks.forEach((b) => { samples.set(b, at); at += b.length; });
    this.send({ type: "input_audio_buffer.append", audio: toBase64(pcm16(samples)) });
  }

  send(event) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event));
  }

  handle(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.player.stop(); // barge-in: the service cancels the answer; stop what is already playing
        this.status("Listening…");
        break;
      case "input_audio_buffer.committed":
        this.users.set(event.item_id, new MessageView(this.log, "user", { text: "…", note: "live voice" }));
        break;
      case "conversation.item.input_audio_transcription.completed":
        this.users.get(event.item_id)?.setText(event.transcript || "(nothing heard)");
        break;
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        this.answer(event.response_id).append(event.delta);
        break;
      case "response.output_audio.delta":
        this.player.push(fromBase64(event.delta));
        break;
      case "response.done": {
        const response = event.response || {};
        const view = this.answers.get(response.id);
        if (response.status === "cancelled") view?.badge("stopped", "Stopped — you spoke over it");
        else if (response.status !== "completed") view?.badge("failed", `Response ${response.status}`);
        this.status("Live: speak, and pause when you are done.");
        break;
      }
      case "error":
        this.showError(`${event.error?.message ?? "realtime error"}${event.error?.code ? ` [${event.error.code}]` : ""}`);
        break;
      default:
    }
  }

  answer(id) {
    if (!this.answers.has(id)) this.answers.set(id, new MessageView(this.log, "assistant", { note: "live voice" }));
    return this.answers.get(id);
  }

  closed(event) {
    const refused = !this.opened;
    this.cleanup();
    if (refused) this.showError("The live voice channel was refused: check the API key and the model (the service answered the WebSocket handshake with an error).");
    else if (event.code !== 1000) this.showError(`The live voice channel closed: ${event.code} ${event.reason || ""}`.trim());
    this.status(refused ? "" : "Live voice ended.");
  }

  stop() {
    if (this.ws) {
      this.ws.onclose = this.ws.onmessage = null;
      this.ws.close(1000);
    }
    this.cleanup();
    this.status("Live voice ended.");
  }

  cleanup() {
    if (this.mic) this.mic.stop();
    if (this.player) this.player.close();
    this.mic = null;
    this.ws = null;
    this.onChange(false);
  }
}

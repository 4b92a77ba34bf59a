// Sending a turn: the Responses API, streamed, in the open stored conversation (or, with no store,
// with the history kept in the page). Shows the answer as it streams, what was read from the media,
// a "stopped" badge when the person stops it, and speaks the answer when asked to.
import { inputPart } from "./attachments.js";
import { drawExplanation } from "./explain.js";
import { MessageView } from "./view.js";

const MAX_SPEECH_CHARS = 4096;

export class Chat {
  constructor({ api, log, settings, attachments, conversations, showError, onBusy }) {
    Object.assign(this, { api, log, settings, attachments, conversations, showError, onBusy });
    this.history = []; // used only when the service keeps no store
  }

  async send(text) {
    const items = this.attachments.take();
    if (!text.trim() && !items.length) return false;
    this.showError(null);
    const content = [];
    if (text.trim()) content.push({ type: "input_text", text });
    items.forEach((item) => content.push(inputPart(item)));
    const user = new MessageView(this.log, "user", { text, attachments: items });
    const message = { type: "message", role: "user", content };
    const body = { model: this.settings.model(), input: [message], stream: true, chorus: { return_media_text: true } };
    if (this.settings.explain()) body.chorus.explain = true;
    const fusion = this.settings.fusion();
    if (fusion) body.chorus.fusion = fusion;
    const instructions = this.settings.instructions();
    if (instructions) body.instructions = instructions;
    const maxTokens = this.settings.maxTokens();
    if (maxTokens) body.max_output_tokens = maxTokens;
    const temperature = this.settings.temperature();
    if (temperature !== null) body.temperature = temperature;
    this.controller = new AbortController();
    this.onBusy(true);
    let answer = null;
    try {
      const conversation = await this.conversations.ensure(text || items.map((i) => i.name).join(", "));
      if (conversation) body.conversation = conversation;
      else {
        body.store = false;
        body.input = [...this.history, message];
      }
      answer = new MessageView(this.log, "assistant");
      answer.badge("streaming", "Answering…");
      await this.stream(body, user, answer, items);
      if (!conversation && answer.node.dataset.status === "completed") this.history.push(message, { type: "message", role: "assistant", content: answer.text });
    } catch (err) {
      if (err.name === "AbortError") {
        answer?.badge("stopped", "Stopped — you cancelled this answer");
      } else {
        if (answer && !answer.text) answer.remove();
        else answer?.badge("failed", "Failed");
        user.badge("failed", "Not answered");
        this.showError(err.describe ? err.describe() : String(err.message || err));
      }
    } finally {
      this.controller = null;
      this.onBusy(false);
      this.conversations.refresh();
    }
    // a whole answer, or one cut at the longest-answer limit, is spoken; a stopped or failed one is not
    const whole = answer && ["completed", "incomplete"].includes(answer.node.dataset.status);
    if (whole && answer.text && this.settings.speak()) await this.speak(answer);
    return true;
  }

  async stream(body, user, answer, items) {
    for await (const event of this.api.events("/v1/responses", body, this.controller.signal)) {
      const media = event.response?.chorus?.media;
      if (media) user.mediaRead(media);
      switch (event.type) {
        case "response.output_text.delta":
          answer.append(event.delta);
          break;
        case "response.completed":
          answer.badge("completed", "");
          break;
        case "response.incomplete":
          answer.badge("incomplete", `Incomplete: ${event.response?.incomplete_details?.reason ?? "cut short"}`);
          break;
        case "response.failed":
          answer.badge("failed", "Failed");
          this.showError(event.response?.error?.message ?? "the answer failed");
          break;
        case "error":
          answer.badge("failed", "Failed");
          this.showError(`${event.message ?? event.error?.message ?? "error"}${event.code ? ` [${event.code}]` : ""}`);
          break;
        default:
      }
      if (["response.completed", "response.incomplete"].includes(event.type) && event.response?.chorus?.explanation) {
        // this message's media, by their index in the whole prompt (stored turns' media come first)
        const mine = `input.${body.input.length - 1}`;
        const indices = (media || []).filter((m) => m.param === mine || m.param.startsWith(`${mine}.`)).map((m) => m.index);
        drawExplanation(user, answer, event.response.chorus.explanation, items, indices);
      }
    }
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  async speak(answer) {
    try {
      const body = { model: "tts-1", input: answer.text.slice(0, MAX_SPEECH_CHARS), voice: this.settings.voice(), response_format: "mp3" };
      const audio = await this.api.blob("/v1/audio/speech", body);
      answer.audio(URL.createObjectURL(audio), true);
    } catch (err) {
      this.showError(`Could not speak the answer: ${err.describe ? err.describe() : err.message}`);
    }
  }

  clear() {
    this.history = [];
    this.log.replaceChildren();
  }
}

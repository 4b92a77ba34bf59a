// One message in the log: who, the text (Markdown, built as DOM nodes), the media it carried, what
// the service read from that media, spoken audio, and a status badge (stopped, incomplete, failed).
import { preview } from "./attachments.js";
import { el, render } from "./markdown.js";

const ROLE = { user: "You", assistant: "Assistant" };
const KIND = { audio: "Heard", image: "Read from the image", document: "Read from the document" };

export class MessageView {
  constructor(log, role, { text = "", attachments = [], note } = {}) {
    this.log = log;
    this.text = text;
    this.node = el("article");
    this.node.className = `msg ${role}`;
    this.node.setAttribute("aria-label", ROLE[role] ?? role);
    this.node.append(el("h3", note ? `${ROLE[role] ?? role} · ${note}` : ROLE[role] ?? role));
    this.media = el("div");
    attachments.forEach((item) => this.media.append(preview(item)));
    this.body = el("div");
    this.body.className = "body";
    this.node.append(this.media, this.body);
    this.draw();
    log.append(this.node);
    this.scroll();
  }

  append(delta) {
    this.text += delta;
    this.draw();
    this.scroll();
  }

  setText(text) {
    this.text = text;
    this.draw();
  }

  draw() {
    this.body.replaceChildren(render(this.text));
  }

  // `chorus.media`: per media item, its kind, the fusion mode it went in with, and the text read.
  mediaRead(entries) {
    if (!entries || !entries.length || this.read) return;
    this.read = el("details");
    this.read.className = "read";
    this.read.open = true;
    this.read.append(el("summary", "What the service read from the media"));
    for (const entry of entries) {
      const line = el("div");
      const label = el("span", `${KIND[entry.kind] ?? entry.kind} (${entry.mode})`);
      label.className = "kind";
      line.append(label);
      line.append(el("blockquote", typeof entry.text === "string" && entry.text ? entry.text : "(no text: this mode passes the media itself)"));
      this.read.append(line);
    }
    this.node.append(this.read);
  }

  badge(kind, label) {
    if (!this.badgeNode) {
      this.badgeNode = el("p");
      this.node.append(this.badgeNode);
    }
    this.badgeNode.className = `badge ${kind}`;
    this.badgeNode.textContent = label;
    this.node.dataset.status = kind;
  }

  audio(url, autoplay) {
    const audio = el("audio");
    audio.controls = true;
    audio.src = url;
    audio.setAttribute("aria-label", "Spoken answer");
    this.node.append(audio);
    if (autoplay) audio.play().catch(() => {});
  }

  remove() {
    this.node.remove();
  }

  scroll() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}

// A stored conversation item (GET /v1/conversations/{id}/items) drawn as a message.
export function storedItem(log, item) {
  if (item.type !== "message") {
    const what = item.type === "function_call" ? `called ${item.name}(${item.arguments})` : `tool result: ${item.output}`;
    return new MessageView(log, "assistant", { text: what, note: "tool" });
  }
  const parts = typeof item.content === "string" ? [{ type: "input_text", text: item.content }] : item.content;
  const text = parts.filter((p) => typeof p.text === "string").map((p) => p.text).join("\n");
  const attachments = parts.filter((p) => p.type === "input_image" && typeof p.image_url === "string" && p.image_url.startsWith("data:image/"))
    .map((p) => ({ kind: "image", name: "stored image", preview: p.image_url }));
  const view = new MessageView(log, item.role, { text, attachments });
  const read = parts.filter((p) => ["input_image", "input_audio", "input_file"].includes(p.type)).map((p) => ({
    kind: { input_image: "image", input_audio: "audio", input_file: "document" }[p.type], mode: "stored",
    text: p.chorus_text ?? (p.media_dropped ? "(media not kept)" : ""),
  }));
  view.mediaRead(read);
  return view;
}

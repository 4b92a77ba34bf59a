// Stored conversations (the service's store): list, open, delete, and the one new turns go into.
import { el } from "./markdown.js";
import { storedItem } from "./view.js";

const TITLE_CHARS = 80;
const PAGE = 50;

export class Conversations {
  constructor({ api, list, note, log, onOpen }) {
    Object.assign(this, { api, list, note, log, onOpen });
    this.current = null;
    this.enabled = true; // until the service says it keeps no store
  }

  // The id new turns go into: the open conversation, or a new one titled after the first message.
  async ensure(title) {
    if (this.current || !this.enabled) return this.current;
    try {
      const made = await this.api.json("POST", "/v1/conversations", { metadata: { title: title.slice(0, TITLE_CHARS) || "Untitled" } });
      this.current = made.id;
    } catch (err) {
      if (err.code !== "store_disabled") throw err;
      this.disable();
    }
    return this.current;
  }

  disable() {
    this.enabled = false;
    this.note.textContent = "This service keeps no store: the conversation lives in this page only.";
    this.list.replaceChildren();
  }

  async refresh() {
    if (!this.enabled) return;
    let page;
    try {
      page = await this.api.json("GET", `/v1/conversations?limit=${PAGE}&order=desc`);
    } catch (err) {
      if (err.code === "store_disabled") return this.disable();
      this.note.textContent = `Could not list conversations: ${err.describe ? err.describe() : err.message}`;
      return;
    }
    this.note.textContent = page.data.length ? "" : "None yet: your first message starts one.";
    this.list.replaceChildren(...page.data.map((c) => this.entry(c)));
  }

  entry(conversation) {
    const li = el("li");
    if (conversation.id === this.current) li.className = "current";
    const title = conversation.metadata?.title || conversation.id;
    const open = el("button", title);
    open.type = "button";
    open.className = "open";
    open.title = `${title} — ${new Date(conversation.created_at * 1000).toLocaleString()}`;
    open.setAttribute("aria-current", conversation.id === this.current ? "true" : "false");
    open.addEventListener("click", () => this.open(conversation.id));
    const remove = el("button", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete conversation ${title}`);
    remove.addEventListener("click", () => this.remove(conversation.id));
    li.append(open, remove);
    return li;
  }

  async open(id) {
    try {
      const page = await this.api.json("GET", `/v1/conversations/${encodeURIComponent(id)}/items?order=asc&limit=100`);
      this.current = id;
      this.onOpen();
      page.data.forEach((item) => storedItem(this.log, item));
    } catch (err) {
      this.note.textContent = `Could not open it: ${err.describe ? err.describe() : err.message}`;
    }
    await this.refresh();
  }

  async remove(id) {
    try {
      await this.api.json("DELETE", `/v1/conversations/${encodeURIComponent(id)}`);
      if (id === this.current) this.start();
    } catch (err) {
      this.note.textContent = `Could not delete it: ${err.describe ? err.describe() : err.message}`;
    }
    await this.refresh();
  }

  start() {
    this.current = null;
    this.onOpen();
  }
}

// The public API, with the key the person typed: JSON calls, server-sent events, OpenAI's error bodies.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && typeof body === "object" && body.error) || {};
    const message = typeof err.message === "string" && err.message ? err.message : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = err.code || null;
    this.param = err.param || null;
    this.type = err.type || null;
  }

  // What the person reads: the status, the API's own message, and which field it is about.
  describe() {
    const where = this.param ? ` (${this.param})` : "";
    const code = this.code ? ` [${this.code}]` : "";
    return this.status ? `${this.status}: ${this.message}${where}${code}` : `${this.message}${code}`;
  }
}

export class Api {
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(json) {
    const headers = {};
    const key = this.getKey();
    if (key) headers["Authorization"] = `Bearer ${key}`;
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  async request(method, path, body, signal) {
    let response;
    try {
      response = await fetch(path, {
        method, signal, headers: this.headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, { error: { message: `the service did not answer (${err.message})` } });
    }
    if (!response.ok) throw new ApiError(response.status, await errorBody(response));
    return response;
  }

  async json(method, path, body) {
    const response = await this.request(method, path, body);
    return response.json();
  }

  async blob(path, body) {
    const response = await this.request("POST", path, body);
    return response.blob();
  }

  // POST `body` and yield each server-sent event's parsed data until the stream ends.
  async *events(path, body, signal) {
    const response = await this.request("POST", path, body, signal);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data || data === "[DONE]") continue;
        yield JSON.parse(data);
      }
    }
  }
}

async function errorBody(response) {
  try {
    return await response.json();
  } catch {
    return { error: { message: `HTTP ${response.status} ${response.statusText}` } };
  }
}

// Microphone capture (an AudioWorklet at the rate asked for), WAV and PCM16 encoding, and a player
// for the 24 kHz PCM16 the service speaks in (spoken answers and the realtime socket).

export class Microphone {
  // `onSamples(Float32Array)` gets each block at `rate` Hz, mono.
  constructor(rate, onSamples, { processing = false } = {}) {
    this.rate = rate;
    this.onSamples = onSamples;
    this.processing = processing;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: this.processing, noiseSuppression: this.processing, autoGainControl: this.processing },
    });
    this.context = new AudioContext({ sampleRate: this.rate });
    await this.context.audioWorklet.addModule("/console/js/capture-worklet.js");
    this.source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "chorus-capture");
    this.node.port.onmessage = (event) => this.onSamples(event.data);
    this.source.connect(this.node);
  }

  async stop() {
    if (this.node) this.node.port.onmessage = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.context) await this.context.close();
    this.stream = this.context = this.node = this.source = null;
  }
}

export function concat(blocks) {
  const out = new Float32Array(blocks.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of blocks) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}

export function pcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
  return new Uint8Array(out.buffer);
}

export function wav(samples, rate) {
  const data = pcm16(samples);
  const out = new Uint8Array(44 + data.length);
  const view = new DataView(out.buffer);
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + data.length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, data.length, true);
  out.set(data, 44);
  return out;
}

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// Plays PCM16 chunks back to back; `stop()` silences at once (barge-in).
export class PcmPlayer {
  constructor(rate = 24000) {
    this.rate = rate;
    this.sources = new Set();
  }

  push(bytes) {
    if (!this.context) this.context = new AudioContext({ sampleRate: this.rate });
    const ints = new Int16Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.byteLength / 2));
    if (!ints.length) return;
    const buffer = this.context.createBuffer(1, ints.length, this.rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < ints.length; i++) channel[i] = ints[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const at = Math.max(this.context.currentTime + 0.02, this.until || 0);
    source.start(at);
    this.until = at + buffer.duration;
    this.sources.add(source);
    source.onended = () => this.sources.delete(source);
  }

  stop() {
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.until = 0;
  }

  async close() {
    this.stop();
    if (this.context) await this.context.close();
    this.context = null;
  }
}

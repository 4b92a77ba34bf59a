// What the next message carries besides its text: images and PDFs (file picker, drag and drop,
// paste) and recordings, each with a preview and a remove button, turned into Responses input parts.
import { el } from "./markdown.js";

const AUDIO_FORMATS = { "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3",
  "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg" }; // the formats input_audio takes

export class Attachments {
  constructor(list, onChange = () => {}) {
    this.list = list;
    this.items = [];
    this.onChange = onChange;
  }

  // A File or Blob from the picker, a drop or a paste; refuses what the API cannot take.
  async add(file, name = file.name || "clip.wav") {
    const mime = file.type || "";
    let kind;
    if (mime.startsWith("image/")) kind = "image";
    else if (mime === "application/pdf") kind = "file";
    else if (AUDIO_FORMATS[mime]) kind = "audio";
    else throw new Error(`${name}: only images, PDFs and WAV, MP3, FLAC or Ogg audio can be attached (this is ${mime || "an unknown type"})`);
    const dataUrl = await readDataUrl(file);
    const item = { kind, name, mime, dataUrl, size: file.size, preview: URL.createObjectURL(file) };
    this.items.push(item);
    this.draw();
    return item;
  }

  remove(item) {
    URL.revokeObjectURL(item.preview);
    this.items = this.items.filter((i) => i !== item);
    this.draw();
  }

  take() {
    const items = this.items;
    this.items = [];
    this.draw();
    return items;
  }

  draw() {
    this.list.replaceChildren(...this.items.map((item) => {
      const li = el("li");
      li.append(preview(item), el("span", item.name));
      li.lastChild.className = "name";
      const remove = el("button", "Remove");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${item.name}`);
      remove.addEventListener("click", () => this.remove(item));
      li.append(remove);
      return li;
    }));
    this.onChange(this.items);
  }
}

// The input part the Responses API takes for an attachment.
export function inputPart(item) {
  if (item.kind === "image") return { type: "input_image", image_url: item.dataUrl };
  if (item.kind === "file") return { type: "input_file", filename: item.name, file_data: item.dataUrl };
  return { type: "input_audio", input_audio: { data: item.dataUrl.split(",", 2)[1], format: AUDIO_FORMATS[item.mime] } };
}

export function preview(item) {
  if (item.kind === "image") {
    const img = el("img");
    img.src = item.preview;
    img.alt = `Attached image ${item.name}`;
    img.className = "preview";
    return img;
  }
  if (item.kind === "audio") {
    const audio = el("audio");
    audio.controls = true;
    audio.src = item.preview;
    audio.setAttribute("aria-label", `Recording ${item.name}`);
    return audio;
  }
  const size = item.size ? ` · ${Math.max(1, Math.round(item.size / 1024))} KB` : "";
  return el("span", `📄 ${item.name}${size}`);
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

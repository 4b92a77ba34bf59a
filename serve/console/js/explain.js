// What an answer rested on (`chorus.explanation`): each input kind's share of the answer's attention
// and what removing it did to the answer's log-probability, drawn under the answer; the audio's
// relevance as a strip under its player (80 ms bins, or the transcript's words), the image's as a
// heatmap over the picture. Built from elements and a canvas; every text is a text node.
import { el } from "./markdown.js";

const NAMES = { text: "Your text", instructions: "Instructions", audio: "Audio", image: "Image", document: "Document" };

export function drawExplanation(user, answer, explanation, items, indices) {
  const box = el("details");
  box.className = "why";
  box.open = true;
  box.append(el("summary", "What this answer rested on"));
  const table = el("table");
  const head = el("tr");
  ["Input", "Share of attention", "Without it (Δ log-prob)"].forEach((t) => head.append(el("th", t)));
  table.append(head);
  for (const [kind, figures] of Object.entries(explanation.modalities || {})) {
    const row = el("tr");
    const meter = el("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = figures.attention_share;
    meter.setAttribute("aria-label", `${NAMES[kind] ?? kind}: ${(figures.attention_share * 100).toFixed(0)} % of the attention`);
    const share = el("td");
    share.append(meter, ` ${(figures.attention_share * 100).toFixed(0)} %`);
    const delta = figures.ablation_delta_logprob;
    row.append(el("th", NAMES[kind] ?? kind), share, el("td", `${delta > 0 ? "+" : ""}${delta.toFixed(2)}${delta < -0.5 ? " (it helped)" : ""}`));
    table.append(row);
  }
  box.append(table);
  const method = explanation.method || {};
  box.append(el("p", `One extra pass over ${method.rows ?? "?"} rows, ${Math.round(method.cost_ms ?? 0)} ms.`));
  box.lastChild.className = "hint";
  answer.node.append(box);

  const segments = explanation.segments || [];
  const media = [...user.media.children]; // before any strip is inserted among them
  items.forEach((item, i) => {
    const mine = segments.filter((s) => s.media === indices[i]);
    const shown = media[i];
    if (!mine.length || !shown) return;
    if (item.kind === "audio") shown.after(audioStrip(mine));
    else if (item.kind === "image") shown.replaceWith(heatmap(shown, mine));
  });
}

function color(weight) {
  // white → orange → dark red, as the relevance grows (weight 0..1)
  const stops = [[255, 255, 255], [245, 158, 66], [127, 29, 29]];
  const at = Math.min(1, Math.max(0, weight)) * 2;
  const [a, b] = at < 1 ? [stops[0], stops[1]] : [stops[1], stops[2]];
  const t = at < 1 ? at : at - 1;
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * t)).join(",")})`;
}

function audioStrip(segments) {
  const top = Math.max(...segments.map((s) => s.relevance)) || 1;
  if (segments.every((s) => typeof s.text === "string")) {
    const words = el("p");
    words.className = "words";
    words.setAttribute("aria-label", "How much the answer attended to each word heard");
    for (const s of segments) {
      const word = el("span", s.text);
      word.style.backgroundColor = color(s.relevance / top);
      if (s.relevance / top > 0.6) word.style.color = "#fff";
      word.title = `relevance ${(s.relevance * 100).toFixed(1)} %`;
      words.append(word, " ");
    }
    return words;
  }
  const canvas = el("canvas");
  canvas.className = "strip";
  canvas.width = 600;
  canvas.height = 18;
  canvas.setAttribute("role", "img");
  const end = Math.max(...segments.map((s) => s.end_s ?? 0)) || 1;
  const peak = segments.reduce((best, s) => (s.relevance > best.relevance ? s : best), segments[0]);
  canvas.setAttribute("aria-label", `Audio relevance over time; the answer attended most to ${peak.start_s?.toFixed(2)}–${peak.end_s?.toFixed(2)} s`);
  const ctx = canvas.getContext("2d");
  for (const s of segments) {
    ctx.fillStyle = color(s.relevance / top);
    ctx.fillRect((s.start_s / end) * canvas.width, 0, Math.max(1, ((s.end_s - s.start_s) / end) * canvas.width), canvas.height);
  }
  return canvas;
}

function heatmap(img, segments) {
  const canvas = el("canvas");
  canvas.className = "heatmap";
  canvas.setAttribute("role", "img");
  const read = segments.filter((s) => s.text).sort((a, b) => b.relevance - a.relevance)[0];
  canvas.setAttribute("aria-label", read ? `Image relevance; the answer attended most to the line “${read.text}”` : "Image relevance by region");
  const draw = () => {
    const scale = Math.min(1, 320 / img.naturalWidth);
    canvas.width = Math.round(img.naturalWidth * scale);
    canvas.height = Math.round(img.naturalHeight * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const top = Math.max(...segments.map((s) => s.relevance)) || 1;
    for (const s of segments) {
      if (!s.box) continue;
      const [x0, y0, x1, y1] = s.box.map((v) => v * scale);
      ctx.globalAlpha = 0.55 * (s.relevance / top);
      ctx.fillStyle = color(1);
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
      ctx.globalAlpha = 1;
      if (s.text) {
        ctx.strokeStyle = "#7f1d1d";
        ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      }
    }
  };
  if (img.complete && img.naturalWidth) draw();
  else img.addEventListener("load", draw, { once: true });
  return canvas;
}

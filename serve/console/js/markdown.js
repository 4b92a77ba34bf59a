// A small Markdown renderer that builds DOM nodes only: every piece of text becomes a text node, so
// model output can never become HTML (the page's CSP also refuses innerHTML with strings).
// Blocks: paragraphs, headings, bullet and numbered lists, fenced code, quotes.
// Inline: `code`, **bold**, *italic*, and http(s) links.

export function render(text) {
  const root = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^```/.test(line)) {
      const code = [];
      i += 1;
      while (i < lines.length && !/^```/.test(lines[i])) code.push(lines[i++]);
      i += 1;
      const pre = el("pre");
      pre.append(el("code", code.join("\n")));
      root.append(pre);
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      root.append(inline(el(`h${Math.min(6, heading[1].length + 3)}`), heading[2]));
      i += 1;
      continue;
    }
    const item = listItem(line);
    if (item) {
      const list = el(item.ordered ? "ol" : "ul");
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (!next || next.ordered !== item.ordered) break;
        list.append(inline(el("li"), next.text));
        i += 1;
      }
      root.append(list);
      continue;
    }
    if (/^>\s?/.test(line)) {
      const quote = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) quote.push(lines[i++].replace(/^>\s?/, ""));
      root.append(inline(el("blockquote"), quote.join(" ")));
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^```|^#{1,6}\s|^>/.test(lines[i]) && !listItem(lines[i])) para.push(lines[i++]);
    const p = el("p");
    para.forEach((part, n) => {
      if (n) p.append(el("br"));
      inline(p, part);
    });
    root.append(p);
  }
  return root;
}

function listItem(line) {
  const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
  if (bullet) return { ordered: false, text: bullet[1] };
  const number = /^\s*\d{1,9}[.)]\s+(.*)$/.exec(line);
  return number ? { ordered: true, text: number[1] } : null;
}

const INLINE = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/;

function inline(parent, text) {
  let rest = text;
  for (;;) {
    const m = INLINE.exec(rest);
    if (!m) break;
    if (m.index) parent.append(rest.slice(0, m.index));
    if (m[1] !== undefined) parent.append(el("code", m[1]));
    else if (m[2] !== undefined) parent.append(el("strong", m[2]));
    else if (m[3] !== undefined) parent.append(el("em", m[3]));
    else parent.append(link(m[4] ?? m[6], m[5] ?? m[6]));
    rest = rest.slice(m.index + m[0].length);
  }
  if (rest) parent.append(rest);
  return parent;
}

function link(text, href) {
  const a = el("a", text);
  a.href = href; // http(s) only, by the pattern above
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

export function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A small Markdown renderer for the model's replies, safe by construction: the whole text is HTML-escaped FIRST, so
// no character of it can open a tag or leave an attribute; only the tags written below are ever added. Links are
// kept only for http(s) URLs. Covered: fenced code (an unclosed fence, as while a reply streams, runs to the end),
// inline code, headings, lists, quotes, rules, bold, italics, strike-through, links.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*).*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}&gt;\s?(.*)$/; // ">" is escaped by now
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    BULLET.test(line) || NUMBERED.test(line);
}

// Pieces already turned into HTML wait in `held` behind a marker that escaped text cannot contain (NULs are removed
// from the source first), so emphasis never reaches into a link's URL or a code span.
function inline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let out = text.replace(/(`+)([^`\n]|[^`\n][\s\S]*?[^`\n])\1(?!`)/g, (_, _ticks, code) => hold(`<code>${code}</code>`));
  out = out.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s()]+)\)/g, (_, label, url) =>
    hold(`<a href="${url}" rel="noopener noreferrer nofollow" target="_blank">${emphasis(label)}</a>`));
  out = emphasis(out);
  return out.replace(/\u0000(\d+)\u0000/g, (_, i) => held[Number(i)]);
}

function emphasis(text) {
  return text
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      const close = new RegExp(`^ {0,3}${m[1][0] === "`" ? "`" : "~"}{${m[1].length},}\\s*$`);
      const code = [];
      for (i += 1; i < lines.length && !close.test(lines[i]); i += 1) code.push(lines[i]);
      i += 1; // the closing fence (or the end of a reply still streaming)
      const lang = m[2] ? ` class="language-${m[2]}"` : "";
      out.push(`<pre><code${lang}>${code.join("\n")}</code></pre>`);
    } else if ((m = HEADING.exec(line))) {
      out.push(`<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`);
      i += 1;
    } else if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      for (; i < lines.length && (m = QUOTE.exec(lines[i])); i += 1) quoted.push(m[1]);
      out.push(`<blockquote>${blocks(quoted)}</blockquote>`);
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const pattern = BULLET.test(line) ? BULLET : NUMBERED;
      const items = [];
      for (; i < lines.length && (m = pattern.exec(lines[i])); i += 1) items.push(`<li>${inline(m[m.length - 1])}</li>`);
      const first = pattern === NUMBERED ? Number(NUMBERED.exec(line)[1]) : 1;
      const tag = pattern === BULLET ? "ul" : "ol";
      out.push(`<${tag}${first !== 1 ? ` start="${first}"` : ""}>${items.join("")}</${tag}>`);
    } else if (!line.trim()) {
      i += 1;
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && (para.length === 0 || !startsBlock(lines[i])); i += 1) {
        para.push(lines[i]);
      }
      out.push(`<p>${para.map(inline).join("<br>")}</p>`);
    }
  }
  return out.join("");
}

// The HTML of a reply. The source is escaped before anything else looks at it.
export function renderMarkdown(source) {
  const text = escapeHtml(String(source).replace(/\u0000/g, "\uFFFD"));
  return blocks(text.split(/\r\n?|\n/));
}

"use strict";
// The llamafile chat page. No libraries and no network beyond this server: the markdown
// renderer and the code highlighter below are small on purpose (the page must be one
// self-contained file embedded in the binary). Everything the model writes is escaped before
// any markup is added, so its output can never inject HTML.

(function () {
  const CHAT_KEY = "llamafile.chat.v1";
  const SETTINGS_KEY = "llamafile.settings.v1";
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), messages: $("messages"), empty: $("empty"), scroller: $("scroller"),
    form: $("form"), input: $("input"), send: $("send"), stop: $("stop"), status: $("status"),
    settings: $("settings"), toggleSettings: $("toggle-settings"), closeSettings: $("close-settings"),
    newChat: $("new-chat"), reset: $("reset-settings"), system: $("system"), serverInfo: $("server-info"),
  };
  const NUMERIC = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "repeat_penalty"];
  let serverDefaults = { temperature: 0.8, top_p: 0.95, top_k: 40, min_p: 0.05, repeat_penalty: 1.0, max_tokens: null, system: "" };
  let settings = null;          // what the user chose (persisted)
  let chat = { messages: [] };  // {role, content, stats?, stopped?, error?}
  let controller = null;        // AbortController of the running request
  let live = null;              // {msg, node, t0, chunks}

  // ---------- storage ----------
  function load(key, fallback) {
    try { const v = JSON.parse(localStorage.getItem(key)); return v == null ? fallback : v; } catch (_) { return fallback; }
  }
  function save(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (_) { /* storage full or disabled */ }
  }
  let saveTimer = null;
  function saveChatSoon() {
    if (saveTimer) return;
    saveTimer = setTimeout(() => { saveTimer = null; save(CHAT_KEY, chat); }, 250);
  }
  function saveChatNow() { clearTimeout(saveTimer); saveTimer = null; save(CHAT_KEY, chat); }

  // ---------- html helpers ----------
  function esc(s) {
    return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  const ICON_COPY = '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V6a2 2 0 0 1 2-2h9"/></svg>';
  const ICON_CHECK = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M5 12l5 5L20 7"/></svg>';
  const ICON_RETRY = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 12a8 8 0 1 0 2.3-5.6M4 4v4h4"/></svg>';

  // ---------- syntax highlighting ----------
  const KW = {
    js: "break case catch class const continue debugger default delete do else export extends finally for from function if import in instanceof let new of return static super switch this throw try typeof var void while with yield async await interface type enum implements private public protected readonly as",
    py: "and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case self",
    rs: "as async await break const continue crate dyn else enum extern fn for if impl in let loop match mod move mut pub ref return self Self static struct super trait type unsafe use where while",
    c: "auto break case char const continue default do double else enum extern float for goto if inline int long register return short signed sizeof static struct switch typedef union unsigned void volatile while bool class namespace template typename public private protected virtual override new delete this using try catch throw nullptr constexpr auto include define ifdef ifndef endif",
    go: "break case chan const continue default defer else fallthrough for func go goto if import interface map package range return select struct switch type var",
    java: "abstract boolean break byte case catch char class const continue default do double else enum extends final finally float for if implements import instanceof int interface long native new package private protected public return short static super switch synchronized this throw throws try void volatile while var record fun val when object companion data override open",
    sh: "if then else elif fi for while until do done case esac function in return exit local export echo cd set unset source sudo",
    sql: "select from where and or not insert into values update set delete create table drop alter index join left right inner outer on group by order having limit as distinct union null primary key foreign references",
    rb: "begin end def class module if elsif else unless while until for in do return yield self nil true false require include attr_accessor puts",
  };
  const LIT = "true false null nil None True False undefined NaN Infinity";
  const LANG = {
    js: "js", javascript: "js", jsx: "js", ts: "js", typescript: "js", tsx: "js", mjs: "js", node: "js", json: "json",
    py: "py", python: "py", python3: "py", rs: "rs", rust: "rs",
    c: "c", h: "c", cpp: "c", "c++": "c", cc: "c", hpp: "c", cs: "c", csharp: "c", "c#": "c", objc: "c", swift: "c",
    go: "go", golang: "go", java: "java", kotlin: "java", kt: "java", scala: "java",
    sh: "sh", bash: "sh", shell: "sh", zsh: "sh", console: "sh", ps1: "sh", powershell: "sh", dockerfile: "sh",
    sql: "sql", rb: "rb", ruby: "rb", html: "xml", xml: "xml", svg: "xml", vue: "xml",
    css: "css", scss: "css", yaml: "yaml", yml: "yaml", toml: "yaml", ini: "yaml", lua: "sql", php: "js",
  };
  const kwCache = {};
  function kwSet(lang) {
    if (!kwCache[lang]) kwCache[lang] = new Set((KW[lang] || "").split(" ").concat(LIT.split(" ")));
    return kwCache[lang];
  }
  function highlight(code, langName) {
    const lang = LANG[(langName || "").toLowerCase()] || (langName ? "js" : null);
    if (!lang) return esc(code);
    if (lang === "xml") {
      return esc(code).replace(/(&lt;\/?)([\w:-]+)((?:.|\n)*?)(\/?&gt;)/g, (m, open, tag, attrs, close) =>
        open + '<span class="hl-tag">' + tag + "</span>" +
        attrs.replace(/([\w:-]+)(=)(&quot;.*?&quot;|&#39;.*?&#39;)/g, '<span class="hl-attr">$1</span>$2<span class="hl-str">$3</span>') + close);
    }
    const hashComment = ["py", "sh", "rb", "yaml"].includes(lang);
    const dashComment = lang === "sql";
    const parts = [];
    if (hashComment) parts.push("#[^\\n]*");
    if (dashComment) parts.push("--[^\\n]*");
    if (!hashComment || lang === "css") parts.push("\\/\\/[^\\n]*", "\\/\\*[\\s\\S]*?(?:\\*\\/|$)");
    const comment = parts.join("|");
    const strings = lang === "py" ? '"""[\\s\\S]*?(?:"""|$)|\'\'\'[\\s\\S]*?(?:\'\'\'|$)|"(?:\\\\.|[^"\\\\\\n])*"?|\'(?:\\\\.|[^\'\\\\\\n])*\'?'
      : lang === "rs" ? '"(?:\\\\.|[^"\\\\])*"?|\'(?:\\\\.|[^\'\\\\\\n]){1,2}\'' // lifetimes are not strings
      : '`(?:\\\\.|[^`\\\\])*`?|"(?:\\\\.|[^"\\\\\\n])*"?|\'(?:\\\\.|[^\'\\\\\\n])*\'?';
    const re = new RegExp("(" + comment + ")|(" + strings + ")|(\\b(?:0[xX][0-9a-fA-F_]+|\\d[\\d_]*(?:\\.\\d+)?(?:[eE][+-]?\\d+)?)[a-zA-Z0-9]*\\b)|([A-Za-z_$][\\w$]*)(!?\\s*\\()?", "g");
    const kws = kwSet(lang);
    let out = "", last = 0, m;
    while ((m = re.exec(code)) !== null) {
      if (m[0] === "") { re.lastIndex++; continue; }
      out += esc(code.slice(last, m.index));
      last = re.lastIndex;
      if (m[1]) out += '<span class="hl-com">' + esc(m[1]) + "</span>";
      else if (m[2]) out += '<span class="hl-str">' + esc(m[2]) + "</span>";
      else if (m[3]) out += '<span class="hl-num">' + esc(m[3]) + "</span>";
      else if (m[4]) {
        const w = m[4];
        if (lang === "json") out += kws.has(w) ? '<span class="hl-lit">' + w + "</span>" : esc(w);
        else if (kws.has(w) || (lang === "sql" && kws.has(w.toLowerCase()))) out += '<span class="hl-kw">' + w + "</span>";
        else if (m[5]) out += '<span class="hl-fn">' + esc(w) + "</span>";
        else if (/^[A-Z][a-z0-9]\w*$/.test(w) && lang !== "sh") out += '<span class="hl-type">' + esc(w) + "</span>";
        else out += esc(w);
        if (m[5]) out += esc(m[5]);
      }
    }
    return out + esc(code.slice(last));
  }

  // ---------- markdown ----------
  // Inline: code spans are cut out first so nothing inside them is interpreted.
  function inline(text) {
    const codes = [];
    let s = text.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, (m, ticks, body) => {
      codes.push("<code>" + esc(body.trim() ? body.replace(/^ (.*) $/, "$1") : body) + "</code>");
      return "\u0000" + (codes.length - 1) + "\u0000";
    });
    s = esc(s);
    s = s.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s)]+)\)/g, (m, label, url) =>
      '<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + label + "</a>");
    s = s.replace(/(^|[\s(])((?:https?:\/\/)[^\s<]+[^\s<.,;:!?)'"&])/g, (m, pre, url) =>
      pre + '<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + url + "</a>");
    s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, (m, i) => codes[+i]);
  }

  const RE_FENCE = /^( {0,3})(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$/;
  const RE_HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RE_HR = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const RE_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const RE_QUOTE = /^ {0,3}>\s?(.*)$/;
  const RE_TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

  function codeBlock(code, lang) {
    return '<div class="codeblock"><div class="code-head"><span>' + esc(lang || "text") +
      '</span><button class="copy" type="button" aria-label="Copy code">' + ICON_COPY + "<span>Copy</span></button></div><pre><code>" +
      highlight(code, lang) + "</code></pre></div>";
  }

  function splitRow(line) {
    let s = line.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
    return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
  }

  function list(lines, i) {
    // Items at the indentation of the first; deeper lines belong to the item above (nested).
    const first = RE_ITEM.exec(lines[i]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const start = ordered ? parseInt(first[2], 10) : 1;
    const items = [];
    while (i < lines.length) {
      const line = lines[i];
      const m = RE_ITEM.exec(line);
      if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) { items.push([m[3]]); i++; continue; }
      if (line.trim() === "") {
        const next = lines[i + 1];
        if (next !== undefined && (/^\s+\S/.test(next) && leading(next) > indent)) { items[items.length - 1].push(""); i++; continue; }
        if (next !== undefined && RE_ITEM.test(next) && RE_ITEM.exec(next)[1].length === indent) { i++; continue; }
        break;
      }
      if (leading(line) > indent || (!m && !RE_FENCE.test(line) && !RE_HEADING.test(line) && !RE_QUOTE.test(line) && !RE_HR.test(line))) {
        items[items.length - 1].push(line.slice(Math.min(leading(line), indent + 2 + (ordered ? 1 : 0))));
        i++; continue;
      }
      break;
    }
    const tag = ordered ? "ol" : "ul";
    let html = "<" + tag + (ordered && start !== 1 ? ' start="' + start + '"' : "") + ">";
    for (const it of items) {
      const inner = blocks(it);
      // a single paragraph renders tight (no <p> margins)
      html += "<li>" + inner.replace(/^<p>([\s\S]*?)<\/p>(?=(<ul|<ol|$))/, "$1") + "</li>";
    }
    return [html + "</" + tag + ">", i];
  }
  function leading(line) { return line.length - line.trimStart().length; }

  function blocks(lines) {
    let html = "", i = 0, para = [];
    const flush = () => { if (para.length) { html += "<p>" + para.map(inline).join("<br>") + "</p>"; para = []; } };
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = RE_FENCE.exec(line))) {
        flush();
        const fence = m[2], lang = m[3], body = [];
        i++;
        while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length)) && lines[i].trim().replace(/[`~]/g, "") === "")) {
          body.push(lines[i].slice(Math.min(m[1].length, leading(lines[i])))); i++;
        }
        i++; // closing fence (or the end while it streams)
        html += codeBlock(body.join("\n"), lang);
      } else if (line.trim() === "") { flush(); i++; }
      else if ((m = RE_HEADING.exec(line))) { flush(); html += "<h" + m[1].length + ">" + inline(m[2]) + "</h" + m[1].length + ">"; i++; }
      else if (RE_HR.test(line) && !para.length) { html += "<hr>"; i++; }
      else if (RE_QUOTE.test(line)) {
        flush();
        const q = [];
        while (i < lines.length && (m = RE_QUOTE.exec(lines[i]))) { q.push(m[1]); i++; }
        html += "<blockquote>" + blocks(q) + "</blockquote>";
      } else if (RE_ITEM.test(line) && (!para.length || !/^\s/.test(line))) {
        flush();
        const [h, next] = list(lines, i); html += h; i = next;
      } else if (line.includes("|") && i + 1 < lines.length && RE_TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        flush();
        const head = splitRow(line);
        const aligns = splitRow(lines[i + 1]).map((c) => c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : "");
        i += 2;
        let t = "<table><thead><tr>" + head.map((c, k) => "<th" + (aligns[k] ? ' style="text-align:' + aligns[k] + '"' : "") + ">" + inline(c) + "</th>").join("") + "</tr></thead><tbody>";
        while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") {
          const cells = splitRow(lines[i]);
          t += "<tr>" + head.map((_, k) => "<td" + (aligns[k] ? ' style="text-align:' + aligns[k] + '"' : "") + ">" + inline(cells[k] || "") + "</td>").join("") + "</tr>";
          i++;
        }
        html += t + "</tbody></table>";
      } else { para.push(line); i++; }
    }
    flush();
    return html;
  }

  function markdown(src) {
    return '<div class="md">' + blocks(src.replace(/\r\n?/g, "\n").split("\n")) + "</div>";
  }

  // ---------- messages ----------
  function fmtStats(s) {
    if (!s) return "";
    const parts = [];
    if (s.tokens != null) parts.push(s.tokens + (s.tokens === 1 ? " token" : " tokens"));
    if (s.tps) parts.push(s.tps.toFixed(1) + " tokens/s");
    if (s.cached) parts.push(s.cached + " cached");
    return parts.join(" · ");
  }

  function messageNode(msg, index) {
    const node = document.createElement("div");
    node.className = "msg " + (msg.error ? "error" : msg.role);
    node.dataset.index = index;
    const content = document.createElement("div");
    content.className = "content";
    node.appendChild(content);
    if (msg.role === "assistant") {
      const meta = document.createElement("div");
      meta.className = "meta";
      node.appendChild(meta);
    }
    updateNode(node, msg, false);
    return node;
  }

  function updateNode(node, msg, streaming) {
    const content = node.firstChild;
    if (msg.error) {
      content.textContent = msg.error;
    } else if (msg.role === "user") {
      content.textContent = msg.content;
    } else if (!msg.content && streaming) {
      content.innerHTML = '<span class="thinking" aria-label="thinking"><i></i><i></i><i></i></span>';
    } else {
      content.innerHTML = markdown(msg.content);
      if (streaming) {
        const lastBlock = content.querySelector(".md > :last-child");
        const target = lastBlock && lastBlock.matches("p, li, h1, h2, h3, h4, h5, h6") ? lastBlock
          : lastBlock && lastBlock.matches("ul, ol") ? lastBlock.querySelector("li:last-child") || lastBlock : null;
        if (target) target.classList.add("cursor");
      }
    }
    const meta = node.querySelector(".meta");
    if (meta) {
      let h = "";
      if (streaming) h = live && live.chunks > 1 ? '<span class="stats">' + liveRate() + "</span>" : "";
      else {
        h = '<span class="stats">' + esc(fmtStats(msg.stats)) + "</span>";
        if (msg.stopped) h += '<span class="stopped-tag">stopped</span>';
        h += '<button class="mini copy-msg" type="button" title="Copy the reply">' + ICON_COPY + "<span>Copy</span></button>";
        if (isLastAssistant(node)) h += '<button class="mini retry" type="button" title="Answer again">' + ICON_RETRY + "<span>Retry</span></button>";
      }
      meta.innerHTML = h;
    }
  }

  function isLastAssistant(node) {
    return +node.dataset.index === chat.messages.length - 1;
  }

  function liveRate() {
    const secs = (performance.now() - live.tFirst) / 1000;
    const tps = secs > 0 ? (live.chunks - 1) / secs : 0;
    return live.chunks + " tokens · " + tps.toFixed(1) + " tokens/s";
  }

  function renderAll() {
    el.messages.textContent = "";
    chat.messages.forEach((m, i) => el.messages.appendChild(messageNode(m, i)));
    el.empty.hidden = chat.messages.length > 0;
    scrollToBottom(true);
  }

  let stick = true;
  el.scroller.addEventListener("scroll", () => {
    const s = el.scroller;
    stick = s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  });
  function scrollToBottom(force) {
    if (force || stick) el.scroller.scrollTop = el.scroller.scrollHeight;
  }

  // ---------- settings ----------
  function effective() {
    const s = Object.assign({}, serverDefaults);
    for (const k of Object.keys(settings || {})) if (settings[k] !== undefined && settings[k] !== null && settings[k] !== "") s[k] = settings[k];
    // an emptied system prompt stays empty even when the server has a default one
    if (settings && typeof settings.system === "string") s.system = settings.system;
    return s;
  }
  function showSettings() {
    const s = effective();
    el.system.value = s.system || "";
    const num = (v) => (typeof v === "number" ? String(+v.toPrecision(6)) : v == null ? "" : String(v));
    for (const k of NUMERIC) {
      $(k).value = num(s[k]);
      const out = $(k + "-out");
      if (out) out.textContent = num(s[k]);
    }
    el.serverInfo.textContent = serverInfo;
  }
  let serverInfo = "";
  // Only what differs from the server's defaults is kept, so a later `--temp` etc. still applies.
  function readSettingsFromForm() {
    settings = {};
    if (el.system.value !== (serverDefaults.system || "")) settings.system = el.system.value;
    for (const k of NUMERIC) {
      const v = $(k).value.trim();
      const n = v === "" ? null : Number(v);
      if (n !== null && !Number.isNaN(n) && n !== serverDefaults[k]) settings[k] = n;
      const out = $(k + "-out");
      if (out) out.textContent = v;
    }
    save(SETTINGS_KEY, settings);
  }
  el.settings.addEventListener("input", readSettingsFromForm);
  function toggleSettings(open) {
    const show = open === undefined ? el.settings.hidden : open;
    el.settings.hidden = !show;
    el.toggleSettings.setAttribute("aria-expanded", String(show));
    if (show) showSettings();
  }
  el.toggleSettings.addEventListener("click", () => toggleSettings());
  el.closeSettings.addEventListener("click", () => toggleSettings(false));
  el.reset.addEventListener("click", () => { settings = {}; save(SETTINGS_KEY, settings); showSettings(); });

  // ---------- talking to the server ----------
  function requestBody() {
    const s = effective();
    const messages = [];
    if (s.system && s.system.trim()) messages.push({ role: "system", content: s.system });
    for (const m of chat.messages) {
      if (m.error || (m.role === "assistant" && !m.content)) continue;
      messages.push({ role: m.role, content: m.content });
    }
    const body = { messages, stream: true, stream_options: { include_usage: true } };
    for (const k of ["temperature", "top_p", "top_k", "min_p", "repeat_penalty"]) if (s[k] != null && !Number.isNaN(s[k])) body[k] = s[k];
    if (s.max_tokens) body.max_tokens = Math.max(1, Math.floor(s.max_tokens));
    if (s.seed != null && s.seed !== "" && !Number.isNaN(s.seed)) body.seed = Math.floor(s.seed);
    return body;
  }

  function setBusy(busy) {
    el.send.hidden = busy;
    el.stop.hidden = !busy;
    document.body.classList.toggle("busy", busy);
    updateSendEnabled();
  }
  function updateSendEnabled() { el.send.disabled = !el.input.value.trim(); }

  async function generate() {
    const msg = { role: "assistant", content: "", pending: true };
    chat.messages.push(msg);
    const index = chat.messages.length - 1;
    const node = messageNode(msg, index);
    el.messages.appendChild(node);
    // the previous reply loses its Retry button
    el.messages.querySelectorAll(".retry").forEach((b) => { if (b.closest(".msg") !== node) b.remove(); });
    el.empty.hidden = true;
    updateNode(node, msg, true);
    scrollToBottom(true);
    saveChatNow();
    controller = new AbortController();
    live = { msg, node, t0: performance.now(), tFirst: 0, chunks: 0 };
    setBusy(true);
    el.status.textContent = "Generating…";
    let frame = 0;
    const paint = () => { frame = 0; updateNode(node, msg, true); scrollToBottom(false); };
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(requestBody()), signal: controller.signal,
      });
      if (!resp.ok) {
        let text = resp.status + " " + resp.statusText;
        try {
          const j = await resp.json();
          if (j.error && j.error.message) text = j.error.message;
          if (j.error && j.error.code === "context_length_exceeded") text += ". Start a new chat to go on.";
        } catch (_) { /* not JSON */ }
        throw new Error(text);
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "", done = false;
      while (!done) {
        const r = await reader.read();
        if (r.done) break;
        buf += decoder.decode(r.value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (!data) continue; // keep-alive comment
          if (data === "[DONE]") { done = true; break; }
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message || "the server reported an error");
          const choice = j.choices && j.choices[0];
          if (choice && choice.delta && choice.delta.content) {
            if (!live.chunks) live.tFirst = performance.now();
            live.chunks++;
            msg.content += choice.delta.content;
            saveChatSoon();
            if (!frame) frame = requestAnimationFrame(paint);
          }
          if (j.timings) msg.stats = { tokens: j.timings.predicted_n, tps: j.timings.predicted_per_second, cached: j.timings.cache_n };
          if (j.usage && msg.stats) msg.stats.tokens = j.usage.completion_tokens;
          if (choice && choice.finish_reason === "length") msg.truncated = true;
        }
      }
    } catch (e) {
      if (e.name === "AbortError") {
        msg.stopped = true;
      } else {
        chat.messages.splice(index, 1);
        node.remove();
        chat.messages.push({ role: "assistant", error: String(e.message || e), content: "" });
        el.messages.appendChild(messageNode(chat.messages[chat.messages.length - 1], chat.messages.length - 1));
      }
    } finally {
      if (frame) cancelAnimationFrame(frame);
      if (msg.stopped && !msg.stats && live.chunks) {
        const secs = (performance.now() - live.tFirst) / 1000;
        msg.stats = { tokens: live.chunks, tps: secs > 0 && live.chunks > 1 ? (live.chunks - 1) / secs : 0 };
      }
      delete msg.pending;
      controller = null;
      live = null;
      if (node.isConnected) updateNode(node, msg, false);
      setBusy(false);
      el.status.textContent = msg.stopped ? "Stopped." : msg.truncated ? "The reply hit the token limit." : "";
      saveChatNow();
      scrollToBottom(false);
    }
  }

  function send(text) {
    text = text.trim();
    if (!text || controller) return;
    // a failed previous attempt is replaced by this one
    if (chat.messages.length && chat.messages[chat.messages.length - 1].error) chat.messages.pop();
    chat.messages.push({ role: "user", content: text });
    el.input.value = "";
    autosize();
    renderAll();
    generate();
  }

  function stop() { if (controller) controller.abort(); }

  function retry() {
    if (controller) return;
    while (chat.messages.length && chat.messages[chat.messages.length - 1].role === "assistant") chat.messages.pop();
    if (!chat.messages.length) return;
    renderAll();
    generate();
  }

  function newChat() {
    stop();
    chat = { messages: [] };
    saveChatNow();
    renderAll();
    el.status.textContent = "";
    el.input.focus();
  }

  async function copy(text, button) {
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); ok = true; }
    } catch (_) { /* fall back below */ }
    if (!ok) {
      const ta = document.createElement("textarea");
      ta.value = text; ta.setAttribute("readonly", ""); ta.style.position = "fixed"; ta.style.opacity = "0";
      document.body.appendChild(ta); ta.select();
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      ta.remove();
    }
    const label = button.querySelector("span");
    const old = label ? label.textContent : "";
    const oldIcon = button.querySelector("svg") ? button.querySelector("svg").outerHTML : "";
    button.innerHTML = (ok ? ICON_CHECK : "") + "<span>" + (ok ? "Copied" : "Copy failed") + "</span>";
    setTimeout(() => { button.innerHTML = oldIcon + "<span>" + old + "</span>"; }, 1500);
  }

  // ---------- events ----------
  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = Math.min(el.input.scrollHeight, window.innerHeight * 0.4) + "px";
    updateSendEnabled();
  }
  el.input.addEventListener("input", autosize);
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(el.input.value); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { if (controller) stop(); else if (!el.settings.hidden) toggleSettings(false); }
  });
  el.form.addEventListener("submit", (e) => { e.preventDefault(); send(el.input.value); });
  el.stop.addEventListener("click", stop);
  el.newChat.addEventListener("click", newChat);
  el.empty.addEventListener("click", (e) => {
    const b = e.target.closest(".suggestion");
    if (b) send(b.textContent);
  });
  el.messages.addEventListener("click", (e) => {
    const codeCopy = e.target.closest(".codeblock .copy");
    if (codeCopy) { copy(codeCopy.closest(".codeblock").querySelector("code").textContent, codeCopy); return; }
    const msgCopy = e.target.closest(".copy-msg");
    if (msgCopy) { const m = chat.messages[+msgCopy.closest(".msg").dataset.index]; if (m) copy(m.content, msgCopy); return; }
    if (e.target.closest(".retry")) retry();
  });
  window.addEventListener("storage", (e) => {
    // another tab changed the conversation: follow it when idle
    if (e.key === CHAT_KEY && !controller) { chat = load(CHAT_KEY, { messages: [] }); renderAll(); }
  });

  // ---------- start ----------
  function start() {
    settings = load(SETTINGS_KEY, {});
    chat = load(CHAT_KEY, { messages: [] });
    if (!chat || !Array.isArray(chat.messages)) chat = { messages: [] };
    // a reply cut short by a reload is kept, marked as stopped
    for (const m of chat.messages) if (m.role === "assistant" && m.pending) { delete m.pending; m.stopped = true; }
    renderAll();
    autosize();
    el.input.focus();
    fetch("/props").then((r) => r.json()).then((p) => {
      el.model.textContent = p.model || "model";
      el.model.title = (p.model || "") + " · context " + p.n_ctx + " tokens · template " + p.chat_template;
      document.title = (p.model || "llamafile") + " · llamafile";
      const d = p.default_generation_settings || {};
      serverDefaults = {
        temperature: d.temperature, top_p: d.top_p, top_k: d.top_k, min_p: d.min_p,
        repeat_penalty: d.repeat_penalty, max_tokens: d.max_tokens, seed: null, system: p.system_prompt || "",
      };
      serverInfo = "Context: " + p.n_ctx + " tokens · " + p.total_slots + " slot(s) · template: " + p.chat_template;
      if (!el.settings.hidden) showSettings();
    }).catch(() => { el.model.textContent = "server unreachable"; });
  }
  // Test hook: the markdown renderer and highlighter, for checks from the browser tests.
  window.llamafileChat = { markdown, highlight };
  start();
})();

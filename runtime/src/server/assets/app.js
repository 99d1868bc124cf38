"use strict";
// The llamafile chat page. No libraries and no network beyond this server: the markdown
// renderer and the code highlighter below are small on purpose (the page must be one
// self-contained file embedded in the binary). Everything the model or the user writes is
// escaped (or set as text) before any markup is added, so it can never inject HTML.

(function () {
  // Every conversation lives in this browser's localStorage under one key.
  const STORE_KEY = "llamafile.chats.v2";
  // The single conversation of earlier versions of this page: taken into the list once.
  const OLD_CHAT_KEY = "llamafile.chat.v1";
  const SETTINGS_KEY = "llamafile.settings.v1";
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), messages: $("messages"), empty: $("empty"), scroller: $("scroller"),
    form: $("form"), input: $("input"), send: $("send"), stop: $("stop"), status: $("status"),
    settings: $("settings"), toggleSettings: $("toggle-settings"), closeSettings: $("close-settings"),
    newChat: $("new-chat"), reset: $("reset-settings"), system: $("system"), serverInfo: $("server-info"),
    sidebar: $("sidebar"), toggleSidebar: $("toggle-sidebar"), closeSidebar: $("close-sidebar"), chatList: $("chat-list"),
    exportBtn: $("export"), exportMenu: $("export-menu"), exportMd: $("export-md"), exportJson: $("export-json"),
    toBottom: $("to-bottom"), meter: $("ctx-meter"), meterFill: $("ctx-fill"), meterText: $("ctx-text"),
    confirm: $("confirm"), confirmText: $("confirm-text"), confirmOk: $("confirm-ok"), confirmCancel: $("confirm-cancel"),
  };
  const NUMERIC = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "repeat_penalty"];
  let serverDefaults = { temperature: 0.8, top_p: 0.95, top_k: 40, min_p: 0.05, repeat_penalty: 1.0, max_tokens: null, system: "" };
  let settings = null;          // what the user chose (persisted)
  // chats: {id, title, named, created, updated, system?, messages: [{role, content, stats?, usage?, stopped?, error?}]}
  let store = { current: null, chats: [] };
  let chat = null;              // the conversation on screen (one of store.chats)
  let controller = null;        // AbortController of the running request
  let live = null;              // {msg, node, t0, chunks}
  let nCtx = 0;                 // the model's context size (from /props)
  let modelName = "";

  // ---------- storage ----------
  function load(key, fallback) {
    try { const v = JSON.parse(localStorage.getItem(key)); return v == null ? fallback : v; } catch (_) { return fallback; }
  }
  function save(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); return true; } catch (_) { return false; }
  }
  // ---------- API key ----------
  // A server started with --api-key answers 401 without one: the page asks for the key once,
  // keeps it in this browser's localStorage and sends it with every request from then on.
  const KEY_KEY = "llamafile.apikey.v1";
  let asking = null;            // the prompt on screen, shared by requests that got 401 meanwhile
  function askKey(wrong) {
    if (!asking) {
      asking = new Promise((resolve) => {
        // let the 401 that led here finish rendering first
        setTimeout(() => {
          const typed = window.prompt(wrong ? "That API key was refused. Enter this server's API key:" : "This server needs an API key (--api-key). Enter it:");
          if (typed && typed.trim()) save(KEY_KEY, typed.trim());
          asking = null;
          resolve(!!(typed && typed.trim()));
        }, 0);
      });
    }
    return asking;
  }
  async function api(path, opts) {
    const send = () => {
      const key = load(KEY_KEY, "");
      const headers = Object.assign({}, (opts && opts.headers) || {}, key ? { Authorization: "Bearer " + key } : {});
      return fetch(path, Object.assign({}, opts || {}, { headers }));
    };
    const r = await send();
    if (r.status !== 401) return r;
    return (await askKey(!!load(KEY_KEY, ""))) ? send() : r;
  }

  let saveTimer = null;
  function saveChatSoon() {
    if (saveTimer) return;
    saveTimer = setTimeout(() => { saveTimer = null; saveStore(); }, 250);
  }
  function saveChatNow() { clearTimeout(saveTimer); saveTimer = null; saveStore(); }
  function saveStore() {
    // An empty conversation is kept only while it is the one on screen.
    const chats = store.chats.filter((c) => c.messages.length || c === chat);
    if (save(STORE_KEY, { current: chat ? chat.id : null, chats })) return true;
    el.status.textContent = "Could not save: this browser's storage is full or disabled. Deleting old conversations frees room.";
    return false;
  }
  function newId() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }
  function blankChat() { const now = Date.now(); return { id: newId(), title: "", named: false, created: now, updated: now, messages: [] }; }
  function validChat(c) {
    if (!c || typeof c !== "object" || !Array.isArray(c.messages)) return null;
    c.messages = c.messages.filter((m) => m && typeof m === "object" && typeof m.role === "string" && typeof (m.content || "") === "string")
      .map((m) => Object.assign(m, { content: m.content || "" }));
    if (typeof c.id !== "string" || !c.id) c.id = newId();
    if (typeof c.title !== "string") c.title = "";
    c.named = !!c.named && !!c.title;
    if (typeof c.created !== "number") c.created = Date.now();
    if (typeof c.updated !== "number") c.updated = c.created;
    // a reply cut short by a reload is kept, marked as stopped
    for (const m of c.messages) if (m.role === "assistant" && m.pending) { delete m.pending; m.stopped = true; }
    return c;
  }
  function readStore() {
    const s = load(STORE_KEY, null);
    const chats = s && Array.isArray(s.chats) ? s.chats.map(validChat).filter(Boolean) : [];
    const seen = new Set();
    const unique = chats.filter((c) => !seen.has(c.id) && seen.add(c.id));
    return { current: s && typeof s.current === "string" ? s.current : null, chats: unique };
  }
  function openStore() {
    store = readStore();
    const old = load(OLD_CHAT_KEY, null);
    const c = old && validChat({ messages: old.messages });
    if (c && c.messages.length) { store.chats.push(c); store.current = c.id; }
    chat = store.chats.find((x) => x.id === store.current) || null;
    if (!chat) { chat = blankChat(); store.chats.push(chat); }
    // the old key goes only once the list holding its conversation is saved
    if (old && saveStore()) {
      try { localStorage.removeItem(OLD_CHAT_KEY); } catch (_) { /* disabled storage */ }
    }
  }

  // ---------- html helpers ----------
  function esc(s) {
    return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  const ICON_COPY = '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V6a2 2 0 0 1 2-2h9"/></svg>';
  const ICON_CHECK = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M5 12l5 5L20 7"/></svg>';
  const ICON_RETRY = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 12a8 8 0 1 0 2.3-5.6M4 4v4h4"/></svg>';
  const ICON_EDIT = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 20h4L19 9l-4-4L4 16z"/><path d="M13.5 6.5l4 4"/></svg>';
  const ICON_TRASH = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M5 7h14M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3"/></svg>';

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

  function miniButton(cls, icon, label, title) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "mini " + cls;
    b.title = title;
    // named by aria-label: the word beside the icon is hidden on phones
    b.setAttribute("aria-label", label || title);
    b.innerHTML = icon + "<span>" + esc(label) + "</span>";
    return b;
  }

  function messageNode(msg, index) {
    const node = document.createElement("div");
    node.className = "msg " + (msg.error ? "error" : msg.role);
    node.dataset.index = index;
    const content = document.createElement("div");
    content.className = "content";
    node.appendChild(content);
    if (msg.role === "assistant" || msg.role === "user") {
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
    if (!meta) return;
    if (msg.role === "user") {
      if (!meta.firstChild) {
        meta.appendChild(miniButton("copy-msg", ICON_COPY, "Copy", "Copy the message"));
        meta.appendChild(miniButton("edit", ICON_EDIT, "Edit", "Edit and send again (the replies after it are replaced)"));
      }
      return;
    }
    let h = "";
    if (streaming) h = live && live.chunks > 1 ? '<span class="stats">' + liveRate() + "</span>" : "";
    else if (!msg.error) {
      h = '<span class="stats">' + esc(fmtStats(msg.stats)) + "</span>";
      if (msg.stopped) h += '<span class="stopped-tag">stopped</span>';
      h += '<button class="mini copy-msg" type="button" title="Copy the reply" aria-label="Copy">' + ICON_COPY + "<span>Copy</span></button>";
      if (isLastAssistant(node)) h += '<button class="mini retry" type="button" title="Answer again" aria-label="Retry">' + ICON_RETRY + "<span>Retry</span></button>";
    }
    meta.innerHTML = h;
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
    el.exportBtn.disabled = chat.messages.length === 0;
    scrollToBottom(true);
    renderList();
    updateMeter();
  }

  // ---------- scrolling ----------
  // Following the reply while it streams, unless the user scrolled up to read: then a button
  // brings them back down.
  let stick = true;
  function onScroll() {
    const s = el.scroller;
    stick = s.scrollHeight - s.scrollTop - s.clientHeight < 80;
    el.toBottom.hidden = stick;
  }
  el.scroller.addEventListener("scroll", onScroll);
  function scrollToBottom(force) {
    if (force || stick) el.scroller.scrollTop = el.scroller.scrollHeight;
    onScroll();
  }
  el.toBottom.addEventListener("click", () => { scrollToBottom(true); el.input.focus(); });

  // ---------- the list of conversations ----------
  function autoTitle(c) {
    const first = c.messages.find((m) => m.role === "user" && m.content.trim());
    if (!first) return "";
    const line = first.content.trim().split("\n")[0].replace(/\s+/g, " ");
    return line.length > 60 ? line.slice(0, 57).trimEnd() + "…" : line;
  }
  function titleOf(c) { return (c.named && c.title) || autoTitle(c) || "New chat"; }

  function renderList() {
    const items = store.chats.filter((c) => c.messages.length || c === chat).sort((a, b) => b.updated - a.updated);
    el.chatList.textContent = "";
    for (const c of items) {
      const li = document.createElement("li");
      li.className = "chat-item" + (c === chat ? " current" : "");
      li.dataset.id = c.id;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "chat-open";
      open.textContent = titleOf(c);
      open.title = titleOf(c);
      if (c === chat) open.setAttribute("aria-current", "page");
      const rename = miniButton("chat-rename", ICON_EDIT, "", "Rename");
      rename.setAttribute("aria-label", "Rename: " + titleOf(c));
      const del = miniButton("chat-delete", ICON_TRASH, "", "Delete");
      del.setAttribute("aria-label", "Delete: " + titleOf(c));
      li.append(open, rename, del);
      el.chatList.appendChild(li);
    }
    document.title = (chat.messages.length ? titleOf(chat) + " · " : "") + (modelName || "llamafile");
  }

  function switchTo(id) {
    const next = store.chats.find((c) => c.id === id);
    if (!next || next === chat) return;
    stop();
    chat = next;
    store.chats = store.chats.filter((c) => c.messages.length || c === chat);
    saveChatNow();
    renderAll();
    el.status.textContent = "";
    if (isPhone()) toggleSidebar(false);
  }

  function newChat() {
    stop();
    if (chat.messages.length) {
      chat = blankChat();
      store.chats.push(chat);
    }
    saveChatNow();
    renderAll();
    el.status.textContent = "";
    if (isPhone()) toggleSidebar(false);
    el.input.focus();
  }

  async function deleteChat(id) {
    const c = store.chats.find((x) => x.id === id);
    if (!c) return;
    if (c.messages.length && !(await confirmDialog("Delete “" + titleOf(c) + "”? This cannot be undone.", "Delete"))) return;
    if (c === chat) stop();
    store.chats = store.chats.filter((x) => x !== c);
    if (c === chat) {
      chat = store.chats.filter((x) => x.messages.length).sort((a, b) => b.updated - a.updated)[0] || blankChat();
      if (!store.chats.includes(chat)) store.chats.push(chat);
      renderAll();
    } else {
      renderList();
    }
    saveChatNow();
  }

  function startRename(li) {
    const c = store.chats.find((x) => x.id === li.dataset.id);
    if (!c) return;
    const input = document.createElement("input");
    input.className = "chat-title-input";
    input.value = titleOf(c);
    input.setAttribute("aria-label", "Conversation name");
    input.maxLength = 200;
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      if (keep) {
        const t = input.value.trim().replace(/\s+/g, " ");
        // an emptied name goes back to the automatic one (from the first message)
        c.named = !!t && t !== autoTitle(c);
        c.title = c.named ? t : "";
        saveChatNow();
      }
      renderList();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
    li.querySelector(".chat-open").replaceWith(input);
    input.focus();
    input.select();
  }

  el.chatList.addEventListener("click", (e) => {
    const li = e.target.closest(".chat-item");
    if (!li) return;
    if (e.target.closest(".chat-open")) switchTo(li.dataset.id);
    else if (e.target.closest(".chat-rename")) startRename(li);
    else if (e.target.closest(".chat-delete")) deleteChat(li.dataset.id);
  });

  function isPhone() { return window.matchMedia("(max-width: 720px)").matches; }
  function toggleSidebar(open) {
    const show = open === undefined ? el.sidebar.hidden : open;
    el.sidebar.hidden = !show;
    el.toggleSidebar.setAttribute("aria-expanded", String(show));
    if (show && isPhone()) toggleSettings(false);
  }
  el.toggleSidebar.addEventListener("click", () => toggleSidebar());
  el.closeSidebar.addEventListener("click", () => toggleSidebar(false));

  // A yes/no question in a modal dialog; resolves true for yes.
  function confirmDialog(text, okLabel) {
    return new Promise((resolve) => {
      el.confirmText.textContent = text;
      el.confirmOk.textContent = okLabel;
      const close = (v) => () => el.confirm.close(v);
      const ok = close("ok"), cancel = close("cancel");
      el.confirmOk.addEventListener("click", ok);
      el.confirmCancel.addEventListener("click", cancel);
      el.confirm.addEventListener("close", () => {
        el.confirmOk.removeEventListener("click", ok);
        el.confirmCancel.removeEventListener("click", cancel);
        resolve(el.confirm.returnValue === "ok");
      }, { once: true });
      el.confirm.returnValue = "";
      el.confirm.showModal();
      el.confirmCancel.focus();
    });
  }

  // ---------- editing a sent message ----------
  function startEdit(node) {
    if (controller || node.classList.contains("editing")) return;
    const index = +node.dataset.index;
    const msg = chat.messages[index];
    if (!msg || msg.role !== "user") return;
    node.classList.add("editing");
    const content = node.querySelector(".content");
    const meta = node.querySelector(".meta");
    const form = document.createElement("form");
    form.className = "edit-form";
    const box = document.createElement("textarea");
    box.className = "edit-box";
    box.value = msg.content;
    box.rows = Math.min(12, msg.content.split("\n").length + 1);
    box.setAttribute("aria-label", "Edit the message");
    const buttons = document.createElement("div");
    buttons.className = "edit-buttons";
    const cancel = document.createElement("button");
    cancel.type = "button"; cancel.className = "btn outline"; cancel.textContent = "Cancel";
    const ok = document.createElement("button");
    ok.type = "submit"; ok.className = "btn primary edit-send"; ok.textContent = "Send";
    ok.title = "Send the edited message; the replies after it are replaced";
    buttons.append(cancel, ok);
    form.append(box, buttons);
    content.hidden = true;
    meta.hidden = true;
    node.insertBefore(form, meta);
    const end = () => { form.remove(); content.hidden = false; meta.hidden = false; node.classList.remove("editing"); };
    cancel.addEventListener("click", end);
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
      else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); end(); }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = box.value.trim();
      if (!text || controller) return;
      chat.messages.splice(index);
      chat.messages.push({ role: "user", content: text });
      chat.updated = Date.now();
      renderAll();
      generate();
    });
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  // ---------- context meter ----------
  // Tokens of the context the conversation fills: exact from the last reply's `usage` (the
  // server counts the template and the system prompt too); what came after it (a stopped reply,
  // a new question) is added as counted by /tokenize, and the figure is then marked "≈".
  let meterTimer = null, meterSeq = 0;
  function updateMeter() {
    clearTimeout(meterTimer);
    meterTimer = setTimeout(measure, 150);
  }
  async function measure() {
    if (!nCtx) return;
    const seq = ++meterSeq;
    const msgs = chat.messages.filter((m) => !m.error && !m.pending && m.content);
    let k = -1;
    for (let i = msgs.length - 1; i >= 0; i--) if (msgs[i].usage) { k = i; break; }
    const known = k >= 0 ? msgs[k].usage.prompt + msgs[k].usage.completion : 0;
    const rest = msgs.slice(k + 1).map((m) => m.content);
    if (k < 0 && rest.length) { const sys = effective().system; if (sys && sys.trim()) rest.unshift(sys); }
    if (!rest.length) { showMeter(known, false); return; }
    let extra = 0;
    try {
      const r = await api("/tokenize", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ content: rest.join("\n"), add_special: false, parse_special: false }),
      });
      if (r.ok) extra = ((await r.json()).tokens || []).length;
    } catch (_) { /* the server is gone: show what is known */ }
    if (seq === meterSeq) showMeter(known + extra, true);
  }
  function showMeter(used, approx) {
    const pct = Math.min(100, (used / nCtx) * 100);
    const fmt = (n) => n.toLocaleString("en-US");
    el.meter.hidden = false;
    el.meter.setAttribute("aria-valuemax", String(nCtx));
    el.meter.setAttribute("aria-valuenow", String(Math.min(used, nCtx)));
    el.meter.setAttribute("aria-valuetext", (approx ? "about " : "") + fmt(used) + " of " + fmt(nCtx) + " tokens");
    el.meter.dataset.used = String(used);
    el.meter.classList.toggle("warn", pct >= 75 && pct < 95);
    el.meter.classList.toggle("full", pct >= 95);
    el.meterFill.style.width = pct.toFixed(1) + "%";
    el.meterText.textContent = (approx ? "≈ " : "") + fmt(used) + " / " + fmt(nCtx) + " tokens";
    el.meter.title = "Context: " + (approx ? "about " : "") + fmt(used) + " of the model's " + fmt(nCtx) + " tokens used (" +
      pct.toFixed(0) + "%). When it is full, start a new chat.";
  }

  // ---------- export ----------
  function fileName(c, ext) {
    const base = titleOf(c).replace(/[^\p{L}\p{N} _-]+/gu, "").trim().replace(/\s+/g, "-").slice(0, 60) || "conversation";
    return base + "." + ext;
  }
  function exportMarkdown(c) {
    const out = ["# " + titleOf(c), "", "_" + (modelName ? modelName + " · " : "") + new Date(c.updated).toISOString() + "_", ""];
    if (c.system) out.push("**System:** " + c.system, "");
    for (const m of c.messages) {
      if (m.error) continue;
      out.push("## " + (m.role === "user" ? "User" : "Assistant") + (m.stopped ? " (stopped)" : ""), "", m.content, "");
    }
    return out.join("\n");
  }
  function exportJson(c) {
    return JSON.stringify({
      title: titleOf(c), model: modelName || null,
      created: new Date(c.created).toISOString(), updated: new Date(c.updated).toISOString(),
      system: c.system || null,
      messages: c.messages.filter((m) => !m.error).map((m) => {
        const o = { role: m.role, content: m.content };
        if (m.stopped) o.stopped = true;
        if (m.usage) o.usage = { prompt_tokens: m.usage.prompt, completion_tokens: m.usage.completion };
        return o;
      }),
    }, null, 2) + "\n";
  }
  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
  function toggleExportMenu(open) {
    const show = open === undefined ? el.exportMenu.hidden : open;
    el.exportMenu.hidden = !show;
    el.exportBtn.setAttribute("aria-expanded", String(show));
    if (show) el.exportMd.focus();
  }
  el.exportBtn.addEventListener("click", (e) => { e.stopPropagation(); toggleExportMenu(); });
  el.exportMd.addEventListener("click", () => { toggleExportMenu(false); download(fileName(chat, "md"), "text/markdown;charset=utf-8", exportMarkdown(chat)); });
  el.exportJson.addEventListener("click", () => { toggleExportMenu(false); download(fileName(chat, "json"), "application/json", exportJson(chat)); });
  document.addEventListener("click", (e) => { if (!el.exportMenu.hidden && !e.target.closest(".menu-wrap")) toggleExportMenu(false); });

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
    if (show) { showSettings(); if (isPhone()) toggleSidebar(false); }
  }
  el.toggleSettings.addEventListener("click", () => toggleSettings());
  el.closeSettings.addEventListener("click", () => toggleSettings(false));
  el.reset.addEventListener("click", () => { settings = {}; save(SETTINGS_KEY, settings); showSettings(); });

  // What an empty system prompt does with this model: its template's own default, or none.
  function describeEmptySystem(templateDefault) {
    if (typeof templateDefault !== "string") return; // unknown: the page's general words stay
    const help = $("system-help");
    if (templateDefault) {
      el.system.placeholder = "Empty: the chat template's default (below)";
      help.textContent = "Left empty, the model's chat template puts in its own: “" + templateDefault + "”";
    } else {
      el.system.placeholder = "Empty: no system prompt";
      help.textContent = "Left empty, no system prompt is used: this model's chat template has no default one.";
    }
  }

  // ---------- talking to the server ----------
  function requestBody(conv) {
    const s = effective();
    const messages = [];
    if (s.system && s.system.trim()) messages.push({ role: "system", content: s.system });
    for (const m of conv.messages) {
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
    // The conversation this reply belongs to, even if the user switches to another meanwhile.
    const conv = chat;
    const msg = { role: "assistant", content: "", pending: true };
    conv.messages.push(msg);
    conv.updated = Date.now();
    const index = conv.messages.length - 1;
    const node = messageNode(msg, index);
    el.messages.appendChild(node);
    // the previous reply loses its Retry button
    el.messages.querySelectorAll(".retry").forEach((b) => { if (b.closest(".msg") !== node) b.remove(); });
    el.empty.hidden = true;
    el.exportBtn.disabled = false;
    updateNode(node, msg, true);
    scrollToBottom(true);
    renderList();
    saveChatNow();
    controller = new AbortController();
    live = { msg, node, t0: performance.now(), tFirst: 0, chunks: 0 };
    setBusy(true);
    el.status.textContent = "Generating…";
    let frame = 0;
    const paint = () => { frame = 0; updateNode(node, msg, true); scrollToBottom(false); };
    const body = requestBody(conv);
    // the system prompt this conversation was last answered with, for its export
    conv.system = body.messages[0]?.role === "system" ? body.messages[0].content : "";
    try {
      const resp = await api("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: controller.signal,
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
          if (j.usage) {
            msg.usage = { prompt: j.usage.prompt_tokens, completion: j.usage.completion_tokens };
            if (msg.stats) msg.stats.tokens = j.usage.completion_tokens;
          }
          if (choice && choice.finish_reason === "length") msg.truncated = true;
        }
      }
    } catch (e) {
      if (e.name === "AbortError") {
        msg.stopped = true;
      } else {
        conv.messages.splice(index, 1);
        node.remove();
        conv.messages.push({ role: "assistant", error: String(e.message || e), content: "" });
        if (conv === chat) el.messages.appendChild(messageNode(conv.messages[conv.messages.length - 1], conv.messages.length - 1));
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
      if (conv === chat) {
        el.status.textContent = msg.stopped ? "Stopped." : msg.truncated ? "The reply hit the token limit." : "";
        updateMeter();
      }
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
    chat.updated = Date.now();
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
    setTimeout(() => { button.innerHTML = oldIcon + "<span>" + esc(old) + "</span>"; }, 1500);
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
    if (e.key !== "Escape" || el.confirm.open) return;
    if (controller) stop();
    else if (!el.exportMenu.hidden) { toggleExportMenu(false); el.exportBtn.focus(); }
    else if (!el.settings.hidden) toggleSettings(false);
    else if (!el.sidebar.hidden && isPhone()) toggleSidebar(false);
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
    const edit = e.target.closest(".edit");
    if (edit) { startEdit(edit.closest(".msg")); return; }
    if (e.target.closest(".retry")) retry();
  });
  window.addEventListener("storage", (e) => {
    // another tab changed the conversations: follow it when idle, staying on this tab's one
    if (e.key !== STORE_KEY || controller || el.messages.querySelector(".editing")) return;
    const id = chat.id;
    store = readStore();
    chat = store.chats.find((c) => c.id === id) || blankChat();
    if (!store.chats.includes(chat)) store.chats.push(chat);
    renderAll();
  });

  // ---------- start ----------
  function start() {
    settings = load(SETTINGS_KEY, {});
    openStore();
    toggleSidebar(window.matchMedia("(min-width: 1000px)").matches);
    el.meter.hidden = true;
    renderAll();
    autosize();
    el.input.focus();
    api("/props").then((r) => r.json()).then((p) => {
      modelName = p.model || "";
      el.model.textContent = p.model || "model";
      el.model.title = (p.model || "") + " · context " + p.n_ctx + " tokens · template " + p.chat_template;
      nCtx = +p.n_ctx || 0;
      const d = p.default_generation_settings || {};
      serverDefaults = {
        temperature: d.temperature, top_p: d.top_p, top_k: d.top_k, min_p: d.min_p,
        repeat_penalty: d.repeat_penalty, max_tokens: d.max_tokens, seed: null, system: p.system_prompt || "",
      };
      describeEmptySystem(p.template_system_prompt);
      serverInfo = "Context: " + p.n_ctx + " tokens · " + p.total_slots + " slot(s) · template: " + p.chat_template;
      if (!el.settings.hidden) showSettings();
      renderList();
      updateMeter();
    }).catch(() => { el.model.textContent = "server unreachable"; });
  }
  // Test hook: the markdown renderer and highlighter, for checks from the browser tests.
  window.llamafileChat = { markdown, highlight };
  start();
})();

// The chat page in a real browser: Debian's Chromium driven by playwright-core (never a
// downloaded browser). Usage: node chat.mjs URL ARTIFACT_DIR
// Opens the page, sends a message, watches the reply stream in (scrolling up shows the "scroll to
// bottom" button), presses stop, reloads and finds the conversation again, reads the context
// meter, edits and resends a message, keeps two conversations and switches, renames and deletes
// them, exports one as Markdown and JSON, checks code blocks (the copy button of a long one
// stays on screen), a phone-sized screen, "new chat", and that the conversation an earlier
// version of the page kept is not lost; saves screenshots in ARTIFACT_DIR.
// Exits non-zero with the failing step on stderr.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [url, artifacts] = process.argv.slice(2);
if (!url || !artifacts) {
  console.error("usage: node chat.mjs URL ARTIFACT_DIR");
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const origin = new URL(url).origin;
const STORE_KEY = "llamafile.chats.v2";

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // As root in a container: no sandbox; and no background traffic to Google's hosts.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 }, acceptDownloads: true });
  const page = await context.newPage();
  const outside = [];
  const consoleErrors = [];
  // blob: is the page's own download of an export
  page.on("request", (r) => { const u = r.url(); if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:" + origin)) outside.push(u); });
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const store = () => page.evaluate((k) => JSON.parse(localStorage.getItem(k)), STORE_KEY);
  const current = async () => { const s = await store(); return s.chats.find((c) => c.id === s.current); };
  const idle = () => page.waitForFunction(() => !document.getElementById("send").hidden, null, { timeout: 30000 });

  await page.goto(url);
  await page.waitForFunction(() => !/loading/.test(document.getElementById("model").textContent), null, { timeout: 10000 });
  const modelName = (await page.textContent("#model")).trim();
  check(modelName.length > 0 && modelName !== "server unreachable", `the model's name is shown (${modelName})`);
  check(await page.isVisible("#empty"), "an empty conversation shows the welcome screen");
  check(await page.isVisible("#sidebar") && (await page.$$(".chat-item")).length === 1, "a wide screen shows the list of conversations (one, the new chat)");

  // Settings: a long reply so that there is something to stop, and a fixed seed.
  await page.click("#toggle-settings");
  check(await page.isVisible("#settings"), "the settings panel opens");
  const props = await page.evaluate(async () => (await fetch("/props")).json());
  check((await page.inputValue("#system")) === props.system_prompt, `the server's --system is the default system prompt (${JSON.stringify(props.system_prompt)})`);
  const placeholder = await page.getAttribute("#system", "placeholder");
  const help = await page.textContent("#system-help");
  // the server tells the template's own default ("" for none); the page says which it is
  const says = props.template_system_prompt ? help.includes("“" + props.template_system_prompt + "”") : /no system prompt/.test(placeholder) && /has no default/.test(help);
  check(typeof props.template_system_prompt === "string" && !/helpful assistant/i.test(placeholder) && says,
    `the empty system prompt says what it does with this model's template (default ${JSON.stringify(props.template_system_prompt)}: ${JSON.stringify(placeholder)}; ${JSON.stringify(help)})`);
  await page.fill("#max_tokens", "3900"); // long enough (seconds) that stop comes first
  await page.fill("#seed", "42");
  await page.fill("#system", "");
  await page.click("#close-settings");

  // Send, watch it stream, scroll up and back down, stop.
  await page.fill("#input", "Hello! Who are you?");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".msg.user .content", { timeout: 5000 });
  check((await page.textContent(".msg.user .content")) === "Hello! Who are you?", "the user's message is shown");
  check(await page.isVisible("#stop"), "the stop button replaces send while generating");
  const replySel = ".msg.assistant:last-child .content";
  await page.waitForFunction((sel) => (document.querySelector(sel)?.textContent || "").trim().length > 0, replySel, { timeout: 20000 });
  const first = (await page.textContent(replySel)).length;
  await page.waitForFunction(([sel, n]) => (document.querySelector(sel)?.textContent || "").length > n, [replySel, first], { timeout: 20000 });
  const second = (await page.textContent(replySel)).length;
  check(second > first, `the reply streams in (${first} then ${second} characters)`);
  check(!(await page.isVisible("#to-bottom")), "while the reply is followed, there is no scroll-to-bottom button");
  // Within one call (no round trips: the reply must still stream when stop is pressed): once
  // the reply overflows, scroll up, see that the page stays there with the button shown, press
  // the button, then stop.
  const scrolling = await page.evaluate(() => new Promise((resolve) => {
    const s = document.getElementById("scroller"), button = document.getElementById("to-bottom");
    const streaming = () => !document.getElementById("stop").hidden;
    const poll = () => {
      if (s.scrollHeight <= s.clientHeight + 300 && streaming()) return setTimeout(poll, 10);
      s.scrollTop = 0;
      setTimeout(() => {
        const r = button.getBoundingClientRect();
        const shown = !button.hidden && document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2)?.closest("#to-bottom") === button;
        const out = { streaming: streaming(), stayed: s.scrollTop, shown, overflow: s.scrollHeight - s.clientHeight };
        button.click();
        out.gap = s.scrollHeight - s.scrollTop - s.clientHeight;
        out.hiddenAfter = button.hidden;
        out.stopped = streaming();
        document.getElementById("stop").click();
        resolve(out);
      }, 100);
    };
    poll();
  }));
  check(scrolling.streaming && scrolling.shown, "scrolled up while the reply streams: the scroll-to-bottom button appears " + JSON.stringify(scrolling));
  check(scrolling.stayed === 0, "scrolled up, the page stays where the user is while the reply streams");
  check(scrolling.gap < 80 && scrolling.hiddenAfter, `the button scrolls to the bottom and goes away (${scrolling.gap}px left)`);
  check(scrolling.stopped, "stop is pressed while the reply streams");
  await page.waitForSelector("#send", { state: "visible", timeout: 5000 });
  check(await page.isVisible(".msg.assistant:last-child .stopped-tag"), "the stopped reply is marked as stopped");
  const stoppedText = await page.textContent(replySel);
  const stats = await page.textContent(".msg.assistant:last-child .stats");
  check(/tokens\/s/.test(stats), `tokens/s is shown (${stats})`);
  // The server cancelled the generation and freed the slot.
  // (polled inside the page: waitForFunction does not wait for an async predicate's promise)
  const slotsFree = await page.evaluate(async () => {
    const end = Date.now() + 5000;
    while (Date.now() < end) {
      const h = await (await fetch("/health")).json();
      if (h.slots_processing === 0) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  });
  check(slotsFree, "the server freed the slot after stop");
  const slots = await page.evaluate(async () => (await fetch("/slots")).json());
  check(slots.some((s) => s.last_stop === "cancelled"), "the server's generation ended as cancelled: " + JSON.stringify(slots));
  // A stopped reply has no usage from the server: the meter counts its text with /tokenize.
  // (the question alone is under 20 tokens; the stopped reply is hundreds)
  await page.waitForFunction(() => +document.getElementById("ctx-meter").getAttribute("aria-valuenow") > 20, null, { timeout: 5000 });
  const approx = await page.evaluate(() => +document.getElementById("ctx-meter").getAttribute("aria-valuenow"));
  const approxText = await page.textContent("#ctx-text");
  check(approx < 4096 && approxText === "≈ " + approx.toLocaleString("en-US") + " / 4,096 tokens", `the context meter estimates a stopped reply (${approxText})`);
  await page.screenshot({ path: path.join(artifacts, "chat-desktop.png") });
  await page.evaluate(() => { document.getElementById("scroller").scrollTop = 0; });
  await page.waitForSelector("#to-bottom", { state: "visible", timeout: 2000 });
  await page.screenshot({ path: path.join(artifacts, "chat-scroll-button.png") });

  // Reload: the conversation is still there.
  await page.reload();
  await page.waitForSelector(".msg.assistant .content", { timeout: 5000 });
  check((await page.textContent(".msg.user .content")) === "Hello! Who are you?", "after a reload the question is still there");
  check((await page.textContent(replySel)) === stoppedText, "after a reload the (stopped) reply is still there");

  // A second turn that finishes by itself; the meter then shows the server's own count.
  await page.click("#toggle-settings");
  await page.fill("#max_tokens", "24");
  await page.click("#close-settings");
  await page.fill("#input", "Show me some code.");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg").length === 4 && !document.getElementById("send").hidden, null, { timeout: 20000 });
  const stats2 = await page.textContent(".msg.assistant:last-child .stats");
  check(/tokens/.test(stats2), `the second reply finished with stats (${stats2})`);
  const usage = (await current()).messages[3].usage;
  const total = usage.prompt + usage.completion;
  await page.waitForFunction((t) => document.getElementById("ctx-meter").getAttribute("aria-valuenow") === String(t), total, { timeout: 5000 });
  const meterText = await page.textContent("#ctx-text");
  check(meterText === total.toLocaleString("en-US") + " / 4,096 tokens" && total > approx,
    `the context meter shows the reply's usage: ${meterText} (prompt ${usage.prompt} + reply ${usage.completion})`);
  check(await page.getAttribute("#ctx-meter", "aria-valuemax") === String(props.n_ctx), "the meter's maximum is the server's n_ctx");

  // Edit-and-resend the first question: what came after it goes, a new reply comes.
  await page.hover(".msg.user >> nth=0");
  await page.click(".msg.user >> nth=0 >> .edit");
  check(await page.isVisible(".edit-box"), "edit opens the message in a text box");
  check((await page.inputValue(".edit-box")) === "Hello! Who are you?", "the text box holds the message");
  await page.fill(".edit-box", "Hello! What can you do?");
  await page.screenshot({ path: path.join(artifacts, "chat-edit.png") });
  await page.click(".edit-send");
  await page.waitForFunction(() => document.querySelectorAll(".msg").length === 2, null, { timeout: 5000 });
  await idle();
  check((await page.textContent(".msg.user .content")) === "Hello! What can you do?", "the edited message is sent in place of the old one");
  const afterEdit = await current();
  check(afterEdit.messages.length === 2 && afterEdit.messages[1].role === "assistant" && afterEdit.messages[1].content.length > 0 && !afterEdit.messages[1].stopped,
    "the conversation after the edited message is replaced by a new reply (2 messages)");

  // Markdown rendering, highlighting, copy button, and no HTML injection.
  const md = await page.evaluate(() => {
    const box = document.createElement("div");
    box.innerHTML = window.llamafileChat.markdown("# Title\n\nSome **bold** and `code`.\n\n```python\ndef f(x):\n    return \"hi\"  # done\n```\n\n- a\n- b\n\n<img src=x onerror=alert(1)>");
    return {
      h1: !!box.querySelector("h1"), strong: !!box.querySelector("strong"), code: !!box.querySelector("p code"),
      block: !!box.querySelector(".codeblock pre code"), kw: !!box.querySelector(".hl-kw"), str: !!box.querySelector(".hl-str"),
      com: !!box.querySelector(".hl-com"), copy: !!box.querySelector(".codeblock .copy"), li: box.querySelectorAll("li").length,
      img: !!box.querySelector("img"), text: box.textContent,
    };
  });
  check(md.h1 && md.strong && md.code && md.li === 2, "markdown: heading, bold, inline code, list");
  check(md.block && md.kw && md.str && md.com && md.copy, "markdown: a code block with highlighting and a copy button");
  check(!md.img && md.text.includes("<img"), "markdown: raw HTML from the model is shown as text, not run");

  // The copy button of a real code block in the page copies its code.
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  await page.evaluate(() => {
    const m = document.querySelector(".msg.assistant:last-child .content");
    m.insertAdjacentHTML("beforeend", window.llamafileChat.markdown("```js\nconst x = 1;\n```"));
  });
  await page.click(".msg.assistant:last-child .codeblock .copy");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(copied === "const x = 1;", "the copy button copies the code");

  // Two conversations: new chat keeps the first in the list; switch between them.
  const firstId = (await store()).current;
  await page.click("#new-chat");
  check((await page.$$(".msg")).length === 0 && await page.isVisible("#empty"), "new chat shows an empty conversation");
  check((await page.$$(".chat-item")).length === 2, "new chat keeps the old conversation in the list");
  await page.fill("#input", "A second <b>conversation</b>\nwith two lines");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".msg.assistant", { timeout: 5000 });
  await idle();
  const titles = await page.$$eval(".chat-open", (bs) => bs.map((b) => b.textContent));
  check(titles.length === 2 && titles[0] === "A second <b>conversation</b>" && titles[1] === "Hello! What can you do?",
    "the list names each conversation after its first message, newest first, as text: " + JSON.stringify(titles));
  check((await page.$$(".chat-open b")).length === 0, "a title is never read as HTML");
  check((await page.getAttribute(".chat-item.current .chat-open", "aria-current")) === "page", "the conversation on screen is marked current");
  await page.click(`.chat-item[data-id="${firstId}"] .chat-open`);
  check((await page.textContent(".msg.user .content")) === "Hello! What can you do?", "switching shows the first conversation");
  check((await store()).current === firstId, "the conversation on screen is remembered");
  await page.click(".chat-item:not(.current) .chat-open");
  check((await page.textContent(".msg.user .content")) === "A second <b>conversation</b>\nwith two lines", "switching back shows the second conversation");
  const secondId = (await store()).current;

  // Rename, kept after a reload.
  await page.click(`.chat-item[data-id="${firstId}"] .chat-rename`);
  await page.fill(".chat-title-input", "Greetings");
  await page.keyboard.press("Enter");
  check((await page.textContent(`.chat-item[data-id="${firstId}"] .chat-open`)) === "Greetings", "a conversation can be renamed");
  await page.reload();
  await page.waitForSelector(".msg.assistant .content");
  check((await page.textContent(`.chat-item[data-id="${firstId}"] .chat-open`)) === "Greetings" && (await store()).current === secondId,
    "after a reload: the name and the conversation on screen are kept");
  await page.screenshot({ path: path.join(artifacts, "chat-two-conversations.png") });

  // Export the first conversation as Markdown and as JSON.
  await page.click(`.chat-item[data-id="${firstId}"] .chat-open`);
  const exported = {};
  for (const [item, ext] of [["#export-md", "md"], ["#export-json", "json"]]) {
    await page.click("#export");
    check(await page.isVisible(item), `the export menu offers ${ext}`);
    const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 5000 }), page.click(item)]);
    const file = path.join(artifacts, "export." + ext);
    await dl.saveAs(file);
    exported[ext] = { name: dl.suggestedFilename(), text: fs.readFileSync(file, "utf8") };
  }
  const conv1 = (await store()).chats.find((c) => c.id === firstId);
  check(exported.md.name === "Greetings.md" && exported.md.text.startsWith("# Greetings\n") &&
    exported.md.text.includes("## User\n\nHello! What can you do?\n") && exported.md.text.includes("## Assistant\n\n" + conv1.messages[1].content),
    `the Markdown export has the title and both messages (${exported.md.name}, ${exported.md.text.length} characters)`);
  const j = JSON.parse(exported.json.text);
  check(exported.json.name === "Greetings.json" && j.title === "Greetings" && j.model === modelName &&
    JSON.stringify(j.messages.map((m) => [m.role, m.content])) === JSON.stringify(conv1.messages.map((m) => [m.role, m.content])),
    `the JSON export holds the conversation (${exported.json.name}: ${j.messages.length} messages)`);

  // Delete asks first; cancel keeps it, confirm deletes it.
  await page.click(`.chat-item[data-id="${secondId}"] .chat-delete`);
  check(await page.isVisible("#confirm") && /Delete “A second <b>conversation<\/b>”/.test(await page.textContent("#confirm-text")), "delete asks for confirmation, naming the conversation");
  await page.screenshot({ path: path.join(artifacts, "chat-delete-confirm.png") });
  await page.click("#confirm-cancel");
  await page.waitForSelector("#confirm", { state: "hidden", timeout: 2000 });
  await page.waitForTimeout(100); // the dialog's close event is a task of its own
  check(!(await page.isVisible("#confirm")) && (await page.$$(".chat-item")).length === 2, "cancel keeps the conversation");
  await page.click(`.chat-item[data-id="${secondId}"] .chat-delete`);
  await page.click("#confirm-ok");
  await page.waitForFunction(() => document.querySelectorAll(".chat-item").length === 1, null, { timeout: 2000 }).catch(() => {});
  check((await page.$$(".chat-item")).length === 1 && (await store()).chats.every((c) => c.id !== secondId), "confirm deletes it (also from storage)");
  check((await page.textContent(".msg.user .content")) === "Hello! What can you do?", "the conversation on screen stays");

  // A reply with rich markdown and a long code block, as a user would see it (light and dark).
  const longCode = Array.from({ length: 120 }, (_, i) => `    let v${i} = compute(${i}); // step ${i}`).join("\n");
  const showcase = {
    id: "showcase", title: "", named: false, created: Date.now(), updated: Date.now() + 1000, messages: [
      { role: "user", content: "How do I read a file line by line in Rust? Compare with Python." },
      { role: "assistant", stats: { tokens: 182, tps: 41.7 }, usage: { prompt: 31, completion: 182 }, content:
        "Use a **`BufReader`**: it reads in large chunks and hands out one line at a time.\n\n" +
        "```rust\nuse std::fs::File;\nuse std::io::{BufRead, BufReader};\n\nfn main() -> std::io::Result<()> {\n" +
        "    let file = File::open(\"notes.txt\")?; // fails if missing\n    for (n, line) in BufReader::new(file).lines().enumerate() {\n" +
        "        println!(\"{}: {}\", n + 1, line?);\n    }\n    Ok(())\n}\n```\n\n" +
        "In Python:\n\n```python\nwith open(\"notes.txt\") as f:\n    for n, line in enumerate(f, 1):\n        print(n, line.rstrip())  # no trailing newline\n```\n\n" +
        "| | Rust | Python |\n|---|---|---|\n| Errors | `Result` per line | exceptions |\n| Memory | one buffer | one buffer |\n\n" +
        "> Both stream the file: neither loads it whole.\n\n1. Open the file\n2. Wrap it\n   - `BufReader` in Rust\n   - nothing in Python\n3. Iterate\n\n" +
        "A long one:\n\n```rust\nfn long() {\n" + longCode + "\n}\n```\n" },
    ] };
  const saved = await page.evaluate((k) => localStorage.getItem(k), STORE_KEY);
  await page.evaluate(([k, c]) => { const s = JSON.parse(localStorage.getItem(k)); s.chats.push(c); s.current = c.id; localStorage.setItem(k, JSON.stringify(s)); }, [STORE_KEY, showcase]);
  await page.reload();
  await page.waitForSelector(".codeblock .hl-kw");
  check((await page.$$(".codeblock")).length === 3 && (await page.$$(".md table")).length === 1, "the showcase renders three code blocks and a table");
  const meterFollows = await page.waitForFunction(() => document.getElementById("ctx-text").textContent === "213 / 4,096 tokens", null, { timeout: 5000 })
    .then(() => true, () => false);
  check(meterFollows, `the meter follows the conversation on screen: 213 tokens from its last reply's usage (${await page.textContent("#ctx-text")})`);
  await page.evaluate(() => { document.getElementById("scroller").scrollTop = 0; });
  await page.screenshot({ path: path.join(artifacts, "chat-markdown.png") });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(artifacts, "chat-markdown-dark.png") });
  await page.emulateMedia({ colorScheme: "light" });
  // Scrolled into the middle of the long code block, its copy button is still on screen.
  const longBlock = ".codeblock >> nth=2";
  await page.evaluate(() => {
    const block = document.querySelectorAll(".codeblock")[2], s = document.getElementById("scroller");
    s.scrollTop += block.getBoundingClientRect().top - s.getBoundingClientRect().top + block.offsetHeight / 2 - s.clientHeight / 2;
  });
  const reach = await page.evaluate(() => {
    const block = document.querySelectorAll(".codeblock")[2], s = document.getElementById("scroller").getBoundingClientRect();
    const b = block.querySelector(".copy").getBoundingClientRect(), blockTop = block.getBoundingClientRect().top;
    const hit = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
    return { blockAbove: blockTop < s.top - 200, inView: b.top >= s.top - 1 && b.bottom <= s.bottom, onTop: !!hit && !!hit.closest(".copy") && hit.closest(".codeblock") === block };
  });
  check(reach.blockAbove && reach.inView && reach.onTop, "in the middle of a long code block its copy button stays on screen: " + JSON.stringify(reach));
  await page.screenshot({ path: path.join(artifacts, "chat-long-code.png") });
  await page.click(longBlock + " >> .copy");
  const copiedLong = await page.evaluate(() => navigator.clipboard.readText());
  check(copiedLong === "fn long() {\n" + longCode + "\n}", `the sticky copy button copies the whole long block (${copiedLong.length} characters)`);
  await page.evaluate(([k, s]) => localStorage.setItem(k, s), [STORE_KEY, saved]);
  await page.reload();
  await page.waitForSelector(".msg.assistant .content");

  check(outside.length === 0, "no request leaves the server: " + JSON.stringify(outside));
  check(consoleErrors.length === 0, "no errors in the console: " + JSON.stringify(consoleErrors));

  // A phone-sized screen: nothing overflows sideways; the list and the settings cover the screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const p2 = await phone.newPage();
  await p2.goto(url);
  const withShowcase = JSON.parse(saved);
  withShowcase.chats.push(showcase);
  await p2.evaluate(([k, s]) => localStorage.setItem(k, s), [STORE_KEY, JSON.stringify(withShowcase)]);
  await p2.reload();
  await p2.waitForSelector(".msg.assistant .content");
  await p2.waitForFunction(() => !/loading/.test(document.getElementById("model").textContent));
  const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `phone: no sideways overflow (${overflow}px)`);
  const meterShown = await p2.waitForSelector("#ctx-meter", { state: "visible", timeout: 5000 }).then(() => true, () => false);
  check(await p2.isVisible("#input") && await p2.isVisible("#send") && meterShown, "phone: the composer and the context meter are visible");
  check(!(await p2.isVisible("#sidebar")), "phone: the list of conversations starts closed");
  // (innerText leaves out the words hidden on phones)
  const unnamed = await p2.$$eval("button", (bs) => bs.filter((b) => b.offsetParent && !(b.getAttribute("aria-label") || b.innerText.trim())).map((b) => b.className));
  check(unnamed.length === 0, "phone: every visible button has a name: " + JSON.stringify(unnamed));
  await p2.screenshot({ path: path.join(artifacts, "chat-phone.png") });
  await p2.click("#toggle-sidebar");
  const listWidth = await p2.evaluate(() => document.getElementById("sidebar").getBoundingClientRect().width);
  check(listWidth >= 380 && (await p2.$$(".chat-item")).length === 2, "phone: the list of conversations takes the whole width");
  await p2.screenshot({ path: path.join(artifacts, "chat-phone-list.png") });
  await p2.click(".chat-item:not(.current) .chat-open");
  check(!(await p2.isVisible("#sidebar")) && (await p2.$$(".codeblock")).length === 3, "phone: picking a conversation closes the list and shows it");
  await p2.evaluate(() => {
    const block = document.querySelectorAll(".codeblock")[2], s = document.getElementById("scroller");
    s.scrollTop += block.getBoundingClientRect().top - s.getBoundingClientRect().top + block.offsetHeight / 2;
  });
  const phoneButton = await p2.waitForSelector("#to-bottom", { state: "visible", timeout: 2000 }).then(() => true, () => false);
  check(phoneButton, "phone: scrolled up, the scroll-to-bottom button shows");
  await p2.screenshot({ path: path.join(artifacts, "chat-phone-long-code.png") });
  await p2.click("#toggle-settings");
  const cover = await p2.evaluate(() => document.getElementById("settings").getBoundingClientRect().width);
  check(cover >= 380, "phone: the settings take the whole width");
  await p2.screenshot({ path: path.join(artifacts, "chat-phone-settings.png") });
  await phone.close();

  // New chat on an empty conversation does not pile up empty ones; an empty one left is dropped.
  await page.click("#new-chat");
  await page.click("#new-chat");
  check((await page.$$(".msg")).length === 0 && await page.isVisible("#empty") && (await page.$$(".chat-item")).length === 2,
    "new chat twice: one empty conversation beside the old one");
  await page.reload();
  await page.waitForSelector("#empty", { state: "visible" });
  check((await page.$$(".msg")).length === 0, "the empty conversation stays empty after a reload");
  await page.screenshot({ path: path.join(artifacts, "chat-empty.png") });
  await page.click(".chat-item:not(.current) .chat-open");
  check((await page.$$(".chat-item")).length === 1 && (await store()).chats.length === 1, "switching away from an empty conversation drops it");

  // The one conversation an earlier version of the page kept is taken into the list, not lost.
  await page.evaluate(() => localStorage.setItem("llamafile.chat.v1", JSON.stringify({ messages: [
    { role: "user", content: "A question from the old page" }, { role: "assistant", content: "Its answer" }] })));
  await page.reload();
  await page.waitForSelector(".msg.assistant .content");
  const migrated = await store();
  check((await page.textContent(".msg.user .content")) === "A question from the old page" && (await page.$$(".chat-item")).length === 2 &&
    migrated.chats.length === 2 && await page.evaluate(() => localStorage.getItem("llamafile.chat.v1")) === null,
    "the old page's conversation joins the list (and its old key goes)");
} catch (e) {
  failed = true;
  console.error(String(e && e.stack || e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

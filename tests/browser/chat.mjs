// The chat page in a real browser: Debian's Chromium driven by playwright-core (never a
// downloaded browser). Usage: node chat.mjs URL ARTIFACT_DIR
// Opens the page, sends a message, watches the reply stream in, presses stop, reloads and finds
// the conversation again, checks code blocks, a phone-sized screen and "new chat"; saves
// screenshots in ARTIFACT_DIR. Exits non-zero with the failing step on stderr.
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
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  const page = await context.newPage();
  const outside = [];
  const consoleErrors = [];
  page.on("request", (r) => { const u = r.url(); if (!u.startsWith(origin) && !u.startsWith("data:")) outside.push(u); });
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(url);
  await page.waitForFunction(() => !/loading/.test(document.getElementById("model").textContent), null, { timeout: 10000 });
  const modelName = (await page.textContent("#model")).trim();
  check(modelName.length > 0 && modelName !== "server unreachable", `the model's name is shown (${modelName})`);
  check(await page.isVisible("#empty"), "an empty conversation shows the welcome screen");

  // Settings: a long reply so that there is something to stop, and a fixed seed.
  await page.click("#toggle-settings");
  check(await page.isVisible("#settings"), "the settings panel opens");
  const props = await page.evaluate(async () => (await fetch("/props")).json());
  check((await page.inputValue("#system")) === props.system_prompt, `the server's --system is the default system prompt (${JSON.stringify(props.system_prompt)})`);
  await page.fill("#max_tokens", "3900"); // long enough (seconds) that stop comes first
  await page.fill("#seed", "42");
  await page.fill("#system", "");
  await page.click("#close-settings");

  // Send, watch it stream, stop.
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
  await page.click("#stop");
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
  await page.screenshot({ path: path.join(artifacts, "chat-desktop.png") });

  // Reload: the conversation is still there.
  await page.reload();
  await page.waitForSelector(".msg.assistant .content", { timeout: 5000 });
  check((await page.textContent(".msg.user .content")) === "Hello! Who are you?", "after a reload the question is still there");
  check((await page.textContent(replySel)) === stoppedText, "after a reload the (stopped) reply is still there");

  // A second turn that finishes by itself.
  await page.click("#toggle-settings");
  await page.fill("#max_tokens", "24");
  await page.click("#close-settings");
  await page.fill("#input", "Show me some code.");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg").length === 4 && !document.getElementById("send").hidden, null, { timeout: 20000 });
  const stats2 = await page.textContent(".msg.assistant:last-child .stats");
  check(/tokens/.test(stats2), `the second reply finished with stats (${stats2})`);

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

  // A reply with rich markdown, as a user would see it (light and dark): kept as screenshots.
  const saved = await page.evaluate(() => localStorage.getItem("llamafile.chat.v1"));
  const showcase = { messages: [
    { role: "user", content: "How do I read a file line by line in Rust? Compare with Python." },
    { role: "assistant", stats: { tokens: 182, tps: 41.7 }, content:
      "Use a **`BufReader`**: it reads in large chunks and hands out one line at a time.\n\n" +
      "```rust\nuse std::fs::File;\nuse std::io::{BufRead, BufReader};\n\nfn main() -> std::io::Result<()> {\n" +
      "    let file = File::open(\"notes.txt\")?; // fails if missing\n    for (n, line) in BufReader::new(file).lines().enumerate() {\n" +
      "        println!(\"{}: {}\", n + 1, line?);\n    }\n    Ok(())\n}\n```\n\n" +
      "In Python:\n\n```python\nwith open(\"notes.txt\") as f:\n    for n, line in enumerate(f, 1):\n        print(n, line.rstrip())  # no trailing newline\n```\n\n" +
      "| | Rust | Python |\n|---|---|---|\n| Errors | `Result` per line | exceptions |\n| Memory | one buffer | one buffer |\n\n" +
      "> Both stream the file: neither loads it whole.\n\n1. Open the file\n2. Wrap it\n   - `BufReader` in Rust\n   - nothing in Python\n3. Iterate" },
  ] };
  await page.evaluate((c) => localStorage.setItem("llamafile.chat.v1", JSON.stringify(c)), showcase);
  await page.reload();
  await page.waitForSelector(".codeblock .hl-kw");
  check((await page.$$(".codeblock")).length === 2 && (await page.$$(".md table")).length === 1, "the showcase renders two code blocks and a table");
  await page.screenshot({ path: path.join(artifacts, "chat-markdown.png") });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(artifacts, "chat-markdown-dark.png") });
  await page.emulateMedia({ colorScheme: "light" });
  await page.evaluate((c) => localStorage.setItem("llamafile.chat.v1", c), saved);
  await page.reload();
  await page.waitForSelector(".msg.assistant .content");

  check(outside.length === 0, "no request leaves the server: " + JSON.stringify(outside));
  check(consoleErrors.length === 0, "no errors in the console: " + JSON.stringify(consoleErrors));

  // A phone-sized screen: nothing overflows sideways; the settings cover the screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const p2 = await phone.newPage();
  await p2.goto(url);
  await p2.evaluate((s) => localStorage.setItem("llamafile.chat.v1", s), await page.evaluate(() => localStorage.getItem("llamafile.chat.v1")));
  await p2.reload();
  await p2.waitForSelector(".msg.assistant .content");
  await p2.waitForFunction(() => !/loading/.test(document.getElementById("model").textContent));
  const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `phone: no sideways overflow (${overflow}px)`);
  check(await p2.isVisible("#input") && await p2.isVisible("#send"), "phone: the composer is visible");
  await p2.screenshot({ path: path.join(artifacts, "chat-phone.png") });
  await p2.click("#toggle-settings");
  const cover = await p2.evaluate(() => document.getElementById("settings").getBoundingClientRect().width);
  check(cover >= 380, "phone: the settings take the whole width");
  await p2.screenshot({ path: path.join(artifacts, "chat-phone-settings.png") });
  await phone.close();

  // New chat empties the conversation, also after a reload.
  await page.click("#new-chat");
  check((await page.$$(".msg")).length === 0 && await page.isVisible("#empty"), "new chat empties the conversation");
  await page.reload();
  await page.waitForSelector("#empty", { state: "visible" });
  check((await page.$$(".msg")).length === 0, "the empty conversation stays empty after a reload");
  await page.screenshot({ path: path.join(artifacts, "chat-empty.png") });
} catch (e) {
  failed = true;
  console.error(String(e && e.stack || e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

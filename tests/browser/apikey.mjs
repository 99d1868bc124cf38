// The chat page against a server started with --api-key, in Debian's Chromium (playwright-core).
// Usage: node apikey.mjs URL KEY
// The page asks for the key once (a prompt) when the server answers 401, keeps it, and sends
// it: the model's name shows, a message gets a reply, a reload asks nothing; a wrong key kept
// from before is asked for again. Exits non-zero with the failing step on stderr.
import { chromium } from "playwright-core";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node apikey.mjs URL KEY");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  const page = await context.newPage();
  const prompts = [];
  let answer = key;
  page.on("dialog", async (d) => { prompts.push(d.message()); await d.accept(answer); });
  const shownModel = async () => {
    await page.waitForFunction(() => !/loading/.test(document.getElementById("model").textContent), null, { timeout: 10000 });
    return (await page.textContent("#model")).trim();
  };

  await page.goto(url);
  const name = await shownModel();
  check(prompts.length === 1 && /API key/.test(prompts[0]), `the page asks for the key once (${JSON.stringify(prompts)})`);
  check(name && name !== "model" && name !== "server unreachable", `with the key, the model's name is shown (${name})`);
  check((await page.evaluate(() => JSON.parse(localStorage.getItem("llamafile.apikey.v1")))) === key, "the key is kept in localStorage");

  await page.fill("#input", "Hello!");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => !document.getElementById("send").hidden, null, { timeout: 60000 });
  const reply = (await page.textContent(".msg.assistant:last-child .content")).trim();
  const error = await page.$(".msg.error");
  check(reply.length > 0 && !error, `a message gets a reply with the kept key (${JSON.stringify(reply.slice(0, 40))})`);
  check(prompts.length === 1, "no second prompt while the key is right");

  await page.reload();
  await shownModel();
  check(prompts.length === 1, "a reload asks nothing");

  await page.evaluate(() => localStorage.setItem("llamafile.apikey.v1", JSON.stringify("wrong")));
  await page.reload();
  const again = await shownModel();
  check(prompts.length === 2 && /refused/.test(prompts[1]) && again === name, `a wrong kept key is asked for again (${JSON.stringify(prompts[1])})`);
} catch (e) {
  failed = true;
  console.error(String(e && e.stack || e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

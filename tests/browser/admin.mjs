// An admin logs in to the dashboard in the system's headless Chromium, runs a dry run
// from the send form, reads its counts, confirms it, and watches the progress bar
// reach done without reloading the page. Then every page is photographed at a
// phone's width and a desktop's.
//
// Run by tests/admin_browser.rs, which starts the daemon and passes:
//   HERALD_URL      the site
//   ADMIN_TOKEN     an admin token
//   READERS         how many readers the dry run should find
//   READER_EMAIL    one of them, to look up
//   SCREENSHOT_DIR  where the screenshots go (under target/)
// Exits non-zero with a sentence on the first thing that is not as an admin expects.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`admin.mjs: ${name} is not set (run it through cargo test --test admin_browser)`);
    process.exit(2);
  }
  return value;
};
const base = env("HERALD_URL");
const token = env("ADMIN_TOKEN");
const readers = Number(env("READERS"));
const readerEmail = env("READER_EMAIL");
const shots = env("SCREENSHOT_DIR");
mkdirSync(shots, { recursive: true });

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const widths = { phone: { width: 390, height: 844 }, desktop: { width: 1280, height: 900 } };

try {
  const context = await browser.newContext({ viewport: widths.desktop });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));
  page.on("console", (message) => {
    // A Content-Security-Policy violation or a failed load shows up here.
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  const outside = [];
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(base) && !url.startsWith("about:") && !url.startsWith("data:")) {
      outside.push(url);
    }
  });

  // 1. Every page wants a login first; a wrong token is refused.
  await page.goto(`${base}/admin/sends/new`);
  await page.getByRole("heading", { name: "Log in" }).waitFor();
  const urls = { login: page.url() };
  await page.getByLabel("Admin token").fill("herald_wrong");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("That token is not valid").waitFor();
  // Chromium logs the refusal's 401 as a failed load: expected here, and only here.
  const refusal = problems.findIndex((p) => p.includes("status of 401"));
  check(refusal >= 0, "the wrong token should be answered 401");
  problems.splice(refusal, 1);
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Queue" }).waitFor();
  urls.queue = page.url();

  // 2. The send form: a dry run first.
  await page.getByRole("link", { name: "New send" }).click();
  await page.getByRole("heading", { name: "New send" }).waitFor();
  urls.send_form = page.url();
  await page.getByLabel("Region").selectOption("riverton");
  await page.getByLabel("Readers of the cadence").selectOption("daily");
  await page.getByRole("button", { name: "Dry run" }).click();
  await page.getByRole("heading", { name: "What it would send" }).waitFor();
  urls.dry_run = page.url();
  const counted = Number(await page.locator("#dry-readers").innerText());
  check(counted === readers, `the dry run should find ${readers} readers, it says ${counted}`);
  const zones = await page.locator("#zones tbody tr").allInnerTexts();
  check(
    zones.length === 1 && zones[0].includes("America/Los_Angeles") && zones[0].includes(String(readers)),
    `readers per zone: ${zones.join(" | ")}`,
  );
  // The sample sits in a frame that may run nothing.
  const frame = page.locator("iframe.sample");
  check((await frame.getAttribute("sandbox")) === "", "the sample frame is sandboxed with no allowances");
  const sample = page.frameLocator("iframe.sample");
  await sample.locator("body").waitFor();
  check((await sample.locator("a").count()) > 0, "the sample shows the digest's links");

  // 3. Confirm, and watch the bar fill without the page reloading.
  await page.getByRole("button", { name: /^Confirm: send to/ }).click();
  await page.getByRole("heading", { name: "Progress" }).waitFor();
  urls.send = page.url();
  await page.evaluate(() => {
    window.stillThisPage = true;
  });
  const bar = page.locator("progress#progress");
  const first = Number(await bar.getAttribute("value"));
  const max = Number(await bar.evaluate((el) => el.max));
  check(max === readers, `the bar's maximum should be ${readers}, it is ${max}`);
  await page.screenshot({ path: join(shots, "send-sending-desktop.png"), fullPage: true });
  await page.waitForFunction(
    () => {
      const bar = document.querySelector("progress#progress");
      return bar && bar.value === bar.max && document.querySelector("[data-state]").textContent === "done";
    },
    null,
    { timeout: 60_000, polling: 200 },
  );
  check(
    await page.evaluate(() => window.stillThisPage === true),
    "the page reloaded instead of refreshing its bar",
  );
  check(first < readers, `the bar started full (${first}); the send should still be going when the page opens`);
  const sent = await page.locator(`[data-count$="-sent"]`).innerText();
  check(Number(sent) === readers, `the page should count ${readers} sent, it says ${sent}`);

  // 4. The other pages.
  await page.getByRole("link", { name: "Sends", exact: true }).click();
  await page.getByRole("heading", { name: "Sends" }).waitFor();
  urls.sends = page.url();
  await page.getByRole("link", { name: "Readers" }).click();
  await page.getByLabel("Email address").fill(readerEmail);
  await page.getByRole("button", { name: "Look up" }).click();
  await page.getByRole("heading", { name: readerEmail }).waitFor();
  check(
    (await page.getByRole("button", { name: "Erase this reader" }).count()) === 1,
    "the reader page offers erasing",
  );
  urls.readers = page.url();
  await page.getByRole("link", { name: "Failures" }).click();
  await page.getByRole("heading", { name: "Recent failures" }).waitFor();
  urls.failures = page.url();
  await page.getByRole("link", { name: "Feeds" }).click();
  await page.getByRole("heading", { name: "Feed health" }).waitFor();
  urls.feeds = page.url();
  await page.getByRole("link", { name: "Sponsors" }).click();
  await page.getByRole("heading", { name: "Sponsor slots" }).waitFor();
  urls.sponsors = page.url();

  // 5. Every page at both widths; on a phone nothing is wider than the screen.
  for (const [width, size] of Object.entries(widths)) {
    await page.setViewportSize(size);
    for (const [name, url] of Object.entries(urls)) {
      if (name === "login") continue;
      await page.goto(url);
      if (name === "dry_run") {
        await page.frameLocator("iframe.sample").locator("a").first().waitFor();
        await page.locator("iframe.sample").scrollIntoViewIfNeeded();
      }
      await page.screenshot({ path: join(shots, `${name}-${width}.png`), fullPage: true });
      if (width === "phone") {
        const wide = await page.evaluate(() => document.documentElement.scrollWidth);
        check(wide <= size.width, `${name} is ${wide}px wide on a ${size.width}px phone`);
      }
    }
  }
  // The login page, after logging out.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("heading", { name: "Log in" }).waitFor();
  for (const [width, size] of Object.entries(widths)) {
    await page.setViewportSize(size);
    await page.screenshot({ path: join(shots, `login-${width}.png`), fullPage: true });
  }
  await page.goto(urls.queue);
  await page.getByRole("heading", { name: "Log in" }).waitFor();

  check(problems.length === 0, `the pages reported problems:\n  ${problems.join("\n  ")}`);
  check(outside.length === 0, `the pages loaded something from elsewhere: ${outside.join(", ")}`);
  console.log(`admin browser test passed; screenshots in ${shots}`);
} catch (error) {
  for (const context of browser.contexts()) {
    for (const [i, open] of context.pages().entries()) {
      await open.screenshot({ path: join(shots, `failure-${i}.png`), fullPage: true }).catch(() => {});
      const text = await open.innerText("body").catch(() => "");
      console.error(`page ${i} (${open.url()}):\n${text}\n`);
    }
  }
  throw error;
} finally {
  await browser.close();
}

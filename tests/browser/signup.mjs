// A person signs up in the system's headless Chromium, against a running herald daemon.
//
// Run by tests/browser.rs, which starts the daemon and passes:
//   HERALD_URL        the sign-up site (a few regions: the full list)
//   HERALD_SEARCH_URL a second site with many regions (the community search)
//   PREFERENCES_URL   a preferences link of a confirmed reader
//   UNSUBSCRIBE_URL   an unsubscribe link of the same reader
//   SCREENSHOT_DIR    where the screenshots go (under target/)
// Exits non-zero with a sentence on the first thing that is not as a reader expects.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`signup.mjs: ${name} is not set (run it through cargo test --test browser)`);
    process.exit(2);
  }
  return value;
};
const base = env("HERALD_URL");
const searchBase = env("HERALD_SEARCH_URL");
const preferencesUrl = env("PREFERENCES_URL");
const unsubscribeUrl = env("UNSUBSCRIBE_URL");
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

try {
  // A phone: narrow screen, touch, the reader's own zone.
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    timezoneId: "Europe/Berlin",
    locale: "en-GB",
  });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));
  page.on("console", (message) => {
    // A Content-Security-Policy violation or a failed load shows up here.
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  const outside = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(base) && !request.url().startsWith(searchBase)) {
      outside.push(request.url());
    }
  });

  // 1. The sign-up page, with a few regions: all listed, grouped.
  await page.goto(`${base}/`);
  await page.screenshot({ path: join(shots, "signup.png"), fullPage: true });
  check(
    (await page.getByLabel("Your time zone").inputValue()) === "Europe/Berlin",
    "the page script should pre-select the browser's time zone (Europe/Berlin)",
  );
  // Every visible control has a label a screen reader can read.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, button")]
      .filter((el) => el.type !== "hidden" && !el.closest("[aria-hidden=true]"))
      .filter((el) => !(el.labels && el.labels.length) && !el.textContent.trim())
      .map((el) => el.outerHTML),
  );
  check(unlabelled.length === 0, `controls without a label: ${unlabelled.join(", ")}`);

  // Fill it in as a person would: tick a town, pick how often, type the address.
  await page.getByLabel("Riverton", { exact: true }).check();
  await page.getByLabel("How often for Riverton").selectOption("weekly");
  await page.getByLabel("Across Cascadia", { exact: true }).check();
  await page.getByLabel("How often for Across Cascadia").selectOption("alert");
  await page.getByLabel("Your email address").fill("browser.reader@example.org");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.getByRole("heading", { name: "Check your inbox" }).waitFor({ timeout: 10_000 });
  await page.screenshot({ path: join(shots, "check-inbox.png"), fullPage: true });

  // 2. The keyboard alone can do it too: Tab to the controls, Space to tick, Enter to send.
  const keys = await context.newPage();
  await keys.goto(`${base}/`);
  await keys.getByLabel("Cedar Falls", { exact: true }).focus();
  await keys.keyboard.press("Space");
  check(await keys.getByLabel("Cedar Falls", { exact: true }).isChecked(), "Space ticks a region");
  await keys.getByLabel("Your email address").focus();
  await keys.keyboard.type("keyboard.reader@example.org");
  await keys.keyboard.press("Enter");
  await keys.getByRole("heading", { name: "Check your inbox" }).waitFor({ timeout: 10_000 });
  await keys.close();

  // 3. Many regions: the search answers as the reader types.
  await page.goto(`${searchBase}/`);
  const search = page.getByLabel("Find your community");
  await search.pressSequentially("oak", { delay: 40 });
  await page.getByLabel("Oakdale", { exact: false }).first().waitFor({ timeout: 10_000 });
  await page.screenshot({ path: join(shots, "signup-search.png"), fullPage: true });
  await page.getByRole("checkbox", { name: /Oakdale/ }).check();
  await page.getByLabel("How often for Oakdale").selectOption("daily");
  await page.getByLabel("Your email address").fill("search.reader@example.org");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.getByRole("heading", { name: "Check your inbox" }).waitFor({ timeout: 10_000 });

  // 4. The pages behind the links in emails.
  await page.goto(preferencesUrl);
  await page.getByRole("heading", { name: "Your preferences" }).waitFor();
  await page.screenshot({ path: join(shots, "preferences.png"), fullPage: true });
  await page.goto(unsubscribeUrl);
  await page.getByRole("button", { name: "Unsubscribe" }).waitFor();
  await page.screenshot({ path: join(shots, "unsubscribe.png"), fullPage: true });
  await page.getByRole("button", { name: "Unsubscribe" }).click();
  await page.getByRole("heading", { name: "You are unsubscribed" }).waitFor({ timeout: 10_000 });
  await page.screenshot({ path: join(shots, "unsubscribed.png"), fullPage: true });

  check(problems.length === 0, `the pages reported problems:\n  ${problems.join("\n  ")}`);
  check(outside.length === 0, `the pages loaded something from elsewhere: ${outside.join(", ")}`);
  console.log(`browser test passed; screenshots in ${shots}`);
} catch (error) {
  // Show what the reader saw when it went wrong.
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

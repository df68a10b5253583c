// Drives the saga dashboard in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) the way a person would: the list shows the orders, clicking the compensated
// one draws its timeline with four lanes and a compensation mark, and opening the confirmed one
// by its address draws no compensation. Saves a screenshot of the compensated order's timeline
// for tests/tests/dashboard.rs to check. Exits non-zero naming the first check that failed.
//
//   node tests/browser/dashboard.mjs --url http://127.0.0.1:8085 --confirmed <order id> \
//     --compensated <order id> --trace-id <trace id of the compensated order> \
//     --screenshot /tmp/timeline.png
//
// DASHBOARD_API_KEY holds the key (read scope) typed into the page's sign-in form; CHROMIUM_PATH
// overrides the browser binary.
import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: options } = parseArgs({
  options: {
    url: { type: "string" },
    confirmed: { type: "string" },
    compensated: { type: "string" },
    "trace-id": { type: "string" },
    screenshot: { type: "string" },
  },
});
for (const name of ["url", "confirmed", "compensated", "trace-id", "screenshot"]) {
  if (!options[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}

const TIMEOUT_MS = 20_000;
const started = Date.now();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const checks = [];
const check = (what, condition, detail) => {
  assert.ok(condition, `${what}: ${detail ?? ""}`);
  checks.push(what);
};

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));

  await page.goto(options.url, { waitUntil: "load" });
  const signIn = page.locator("#sign-in");
  await signIn.waitFor({ state: "visible", timeout: TIMEOUT_MS });
  check("without a key the page asks for one and lists no order", (await page.locator("#orders tr.order").count()) === 0);
  await page.fill("#api-key", "not-a-key-of-this-dashboard");
  await page.click("#sign-in button");
  await page.waitForFunction(() => document.querySelector("#sign-in-error")?.textContent.includes("unknown API key"), null, { timeout: TIMEOUT_MS });
  check("a wrong key is refused and the page says why", await signIn.isVisible());
  await page.fill("#api-key", process.env.DASHBOARD_API_KEY ?? "");
  await page.click("#sign-in button");
  const row = (orderId) => page.locator(`#orders tr.order[data-order-id="${orderId}"]`);
  await row(options.confirmed).waitFor({ timeout: TIMEOUT_MS });
  await row(options.compensated).waitFor({ timeout: TIMEOUT_MS });
  check("the list shows the confirmed order as CONFIRMED", (await row(options.confirmed).getAttribute("data-status")) === "CONFIRMED");
  check("the list shows the compensated order as FAILED", (await row(options.compensated).getAttribute("data-status")) === "FAILED");

  const lagRows = await page.locator("#lag-rows tr").count();
  check("the summary shows the lag of four consumer groups", lagRows === 4, `${lagRows} rows`);
  const deadLetterRows = await page.locator("#dead-letter-rows tr").count();
  check("the summary shows four dead-letter topics", deadLetterRows === 4, `${deadLetterRows} rows`);

  await row(options.compensated).click();
  await page.waitForFunction(
    (orderId) => document.querySelector("#timeline-order")?.textContent === orderId && document.querySelector("#timeline-chart"),
    options.compensated,
    { timeout: TIMEOUT_MS },
  );
  check("clicking the order puts it in the address", page.url().endsWith(`#/orders/${options.compensated}`), page.url());
  const lanes = await page.locator("#timeline svg .lane").evaluateAll((nodes) => nodes.map((node) => node.dataset.lane));
  check("the timeline has four lanes", JSON.stringify(lanes) === JSON.stringify(["order", "payment", "inventory", "notification"]), JSON.stringify(lanes));
  const marks = await page.locator("#timeline svg .mark").count();
  const steps = await page.locator("#steps tbody tr").count();
  check("every event of the order is a mark", marks >= 5 && marks === steps, `${marks} marks, ${steps} table rows`);
  const compensations = page.locator("#timeline svg .mark.compensation");
  check("the timeline shows a compensation mark", (await compensations.count()) >= 1);
  const compensationTypes = await compensations.evaluateAll((nodes) => nodes.map((node) => node.dataset.eventType));
  check("the compensation mark is the refund", compensationTypes.includes("payment.refunded"), JSON.stringify(compensationTypes));
  const fills = await page.evaluate(() => ({
    compensation: getComputedStyle(document.querySelector("#timeline-chart .mark.compensation")).fill,
    normal: getComputedStyle(document.querySelector("#timeline-chart .mark:not(.compensation):not(.failure)")).fill,
  }));
  check("a compensation is drawn in another colour than a normal event", fills.compensation !== fills.normal, JSON.stringify(fills));
  const traceId = (await page.locator("#trace-id").textContent()).trim();
  check("the timeline shows the order's trace id", traceId === options["trace-id"], traceId);
  const emailed = await page.locator('#steps tr[data-event-type="notification.sent"]').count();
  check("the timeline ends with the email sent", emailed === 1);

  await page.locator("#timeline-chart").screenshot({ path: options.screenshot });
  checks.push(`screenshot saved to ${options.screenshot}`);

  await page.goto(`${options.url}/?order=${options.confirmed}`, { waitUntil: "load" });
  check("the key is kept for the tab", !(await signIn.isVisible()));
  await page.waitForFunction(
    (orderId) => document.querySelector("#timeline-order")?.textContent === orderId && document.querySelector("#timeline-chart"),
    options.confirmed,
    { timeout: TIMEOUT_MS },
  );
  check("an order opened by its address draws its timeline", (await page.locator("#timeline svg .mark").count()) >= 5);
  check("a confirmed order has no compensation mark", (await page.locator("#timeline svg .mark.compensation").count()) === 0);
  check("the confirmed order's status is shown", (await page.locator("#order-status").textContent()).includes("CONFIRMED"));

  check("the page raised no script error", pageErrors.length === 0, pageErrors.join("; "));
  console.log(JSON.stringify({ ok: true, browser: browser.version(), seconds: (Date.now() - started) / 1000, checks }));
} catch (error) {
  console.error(JSON.stringify({ ok: false, error: error.message, passed: checks }));
  process.exitCode = 1;
} finally {
  await browser.close();
}

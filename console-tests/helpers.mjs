// Shared by the console's browser tests (scripts/console-tests.sh starts the cluster and sets
// CONSOLE_URL, TOKEN_A, TOKEN_B, CLUSTER_ENV and REPO_ROOT).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

const AXE_SOURCE = readFileSync(
  createRequire(import.meta.url).resolve("axe-core/axe.min.js"),
  "utf8",
);

export const BASE = process.env.CONSOLE_URL;
export const TOKEN_A = process.env.TOKEN_A;
export const TOKEN_B = process.env.TOKEN_B;
export const REPO_ROOT = process.env.REPO_ROOT;
assert.ok(BASE && TOKEN_A && TOKEN_B && REPO_ROOT, "run through scripts/console-tests.sh");

const CLUSTER_ENV = Object.fromEntries(
  process.env.CLUSTER_ENV.split(" ").map((pair) => pair.split("=", 2)),
);
export const STATE_DIR = CLUSTER_ENV.STATE_DIR;

/// Runs scripts/cluster.sh with the test cluster's settings.
export function cluster(args, extra = {}) {
  return execFileSync(path.join(REPO_ROOT, "scripts/cluster.sh"), args, {
    env: { ...process.env, ...CLUSTER_ENV, ...extra },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
}

/// Stops one component the cluster started (its pid file names it), and waits for it to exit.
export async function stopComponent(component) {
  const pid = Number(readFileSync(path.join(STATE_DIR, `${component}.pid`), "utf8").trim());
  process.kill(pid, "SIGTERM");
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/// Calls the API with a token; returns the parsed JSON (throws unless 2xx).
export async function api(token, method, route, body) {
  const send = () =>
    fetch(`${BASE}/api/v1${route}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  // A kept-alive connection the gateway closed while idle (after `header_read_timeout_ms`) can
  // fail the next request as it is sent; a GET is asked again once on a new connection.
  const response = await send().catch((error) => {
    if (method !== "GET") throw error;
    return send();
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/// A fresh headless chromium (Debian's). Playwright starts it with a new temporary profile
/// (its own --user-data-dir), deleted when the browser closes.
export async function launch() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return { browser, close: () => browser.close() };
}

/// One browser for the test file that calls it (at its top level): launched before its first
/// test, closed after its last. Its `browser` is set once launched.
export function sharedChromium() {
  const shared = {};
  before(async () => {
    Object.assign(shared, await launch());
  });
  after(async () => {
    await shared.close();
  });
  return shared;
}

/// A page that records console errors, page errors and dialogs (none may happen: a dialog
/// would be a script the console did not ship), logged in with `token`.
export async function loggedIn(browser, token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const trouble = [];
  page.on("console", (message) => {
    if (message.type() === "error") trouble.push(`console error: ${message.text()} (${message.location().url})`);
  });
  page.on("pageerror", (error) => trouble.push(`page error: ${error.message}`));
  page.on("dialog", async (dialog) => {
    trouble.push(`dialog: ${dialog.type()} ${dialog.message()}`);
    await dialog.dismiss();
  });
  await page.goto(`${BASE}/ui/executions`);
  assert.match(page.url(), /\/ui\/login$/, "a page without a session sends to the login form");
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(/\/ui\/executions$/);
  return { context, page, trouble };
}

/// Publishes a playbook to the catalog of `token`'s tenant.
export function publish(token, playbook) {
  return api(token, "POST", "/playbooks", playbook);
}

/// Runs version 1 of a catalog playbook through the console's run form; returns the new
/// execution's id (the page is then on the execution's page).
export async function runFromCatalog(page, name, input = "{}") {
  await page.goto(`${BASE}/ui/catalog`);
  await page.getByRole("link", { name, exact: true }).click();
  await page.getByLabel("Input (a JSON object)").fill(input);
  await page.getByRole("button", { name: "Run" }).click();
  await page.waitForURL(/\/ui\/executions\/\d+$/);
  return page.url().split("/").pop();
}

/// The data-status of every node of the DAG, by step name.
export function dagStatuses(page) {
  return page.$$eval("svg.dag [data-step]", (nodes) =>
    Object.fromEntries(nodes.map((node) => [node.dataset.step, node.dataset.status])),
  );
}

/// Runs axe-core on the page; returns its serious and critical violations, described.
export async function seriousViolations(page) {
  // Evaluated through the DevTools protocol: the console's CSP rightly refuses an injected tag.
  await page.evaluate(AXE_SOURCE);
  const results = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  return results.violations
    .filter((violation) => ["serious", "critical"].includes(violation.impact))
    .map((violation) => `${violation.id} (${violation.impact}): ${violation.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}

/// With CONSOLE_SCREENSHOTS=1, saves the page as wiki/img/console-<name>.png (committed; the
/// README shows the execution page).
export async function screenshot(page, name) {
  if (process.env.CONSOLE_SCREENSHOTS !== "1") return;
  await page.screenshot({ path: path.join(REPO_ROOT, "wiki", "img", `console-${name}.png`) });
}

/// Waits until an execution has ended (the API says so), for at most `seconds`.
export async function ended(token, id, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const execution = await api(token, "GET", `/executions/${id}`);
    if (["succeeded", "failed", "cancelled"].includes(execution.status)) return execution;
    assert.ok(Date.now() < deadline, `execution ${id} still ${execution.status} after ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

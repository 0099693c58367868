// Cancel from the page, hostile strings shown as text, tenants kept apart, and axe-core on every
// page.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import {
  BASE, STATE_DIR, TOKEN_A, TOKEN_B, api, loggedIn, publish, runFromCatalog, screenshot,
  seriousViolations, sharedChromium,
} from "./helpers.mjs";

const chromium = sharedChromium();

const SCRIPT = "<script>alert('xss-script')</script>";
const IMG = '"><img src=x onerror=alert(\'xss-img\')>';

test("cancel a long-running execution from its page", async () => {
  await publish(TOKEN_A, {
    name: "console-long",
    steps: [{ name: "wait", action: "sleep", with: { ms: 600000 }, timeout: "20m" }],
  });
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  const id = await runFromCatalog(page, "console-long");
  await page.locator("svg.dag [data-step='wait'][data-status='running']").waitFor({ timeout: 30_000 });
  await page.getByText("Cancel this execution…").click();
  await page.getByRole("button", { name: "Confirm: cancel execution" }).click();
  await page.waitForURL(new RegExp(`/ui/executions/${id}$`));
  await page.locator("#exec-status .badge", { hasText: "cancelled" }).waitFor({ timeout: 30_000 });
  const execution = await api(TOKEN_A, "GET", `/executions/${id}`);
  assert.equal(execution.status, "cancelled");
  assert.deepEqual(trouble, []);
  await context.close();
});

test("hostile labels, input, arguments, variables and errors are shown as text", async () => {
  // Playbook and step names are letters, digits, `_`, `.` and `-` (the API refuses others), so
  // the strings go everywhere else a user's text is shown.
  await publish(TOKEN_A, {
    name: "console-hostile",
    steps: [
      { name: "args", action: "noop", with: { a: SCRIPT, b: IMG }, set: { s: SCRIPT, i: IMG } },
      { name: "boom", action: "fail", with: { message: `${SCRIPT} ${IMG}` }, needs: ["args"] },
    ],
  });
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  await page.goto(`${BASE}/ui/catalog/console-hostile`);
  await page.getByLabel("Input (a JSON object)").fill(JSON.stringify({ s: SCRIPT, i: IMG }));
  await page.getByLabel("Labels (key=value,…)").fill(`s=${SCRIPT.replaceAll(",", "")},i=${IMG}`);
  await page.getByRole("button", { name: "Run" }).click();
  await page.waitForURL(/\/ui\/executions\/\d+$/);
  await page.locator("#exec-status .badge", { hasText: "failed" }).waitFor({ timeout: 60_000 });
  await page.locator("#steps tr[data-step='boom'] pre.error").waitFor();
  await screenshot(page, "hostile");
  for (const where of [page.url(), `${BASE}/ui/executions`]) {
    await page.goto(where);
    const text = await page.locator("main").innerText();
    assert.ok(text.includes(SCRIPT), `${where} shows the script tag as text`);
    assert.ok(text.includes(IMG), `${where} shows the img tag as text`);
    assert.equal(await page.locator("main img").count(), 0, "no img element was injected");
    assert.equal(await page.locator("script").count(), 1, "only the console's own script");
    assert.equal(await page.locator("[onerror]").count(), 0);
  }
  assert.deepEqual(trouble, [], "no script ran, no dialog opened");
  await context.close();
});

test("tenant B sees none of tenant A's executions, pages or catalog entries", async () => {
  await publish(TOKEN_A, { name: "console-tenant-a", steps: [{ name: "only", action: "noop" }] });
  const mine = await api(TOKEN_A, "POST", "/executions", {
    playbook: { name: "console-tenant-a" },
    labels: { owner: "tenant-a" },
  });
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_B);
  await page.goto(`${BASE}/ui/executions?labels=owner%3Dtenant-a`);
  assert.match(await page.locator("#listing").innerText(), /No executions\./);
  await page.goto(`${BASE}/ui/executions`);
  assert.equal(await page.locator(`[data-execution="${mine.execution_id}"]`).count(), 0);
  const response = await page.goto(`${BASE}/ui/executions/${mine.execution_id}`);
  assert.equal(response.status(), 404, "another tenant's execution is a missing one");
  await page.goto(`${BASE}/ui/catalog`);
  assert.equal(await page.getByRole("link", { name: "console-tenant-a" }).count(), 0);
  const entry = await page.goto(`${BASE}/ui/catalog/console-tenant-a`);
  assert.equal(entry.status(), 404);
  // And a stream of A's execution through B's session is refused like a missing one.
  const stream = await page.request.get(`${BASE}/ui/executions/${mine.execution_id}/stream`);
  assert.equal(stream.status(), 404);
  // The two 404 pages above are console errors by design; nothing else may be.
  assert.ok(trouble.every((entry) => entry.includes("404")), trouble.join("\n"));
  await context.close();
});

test("axe-core finds no serious or critical violation on any page", async () => {
  const { context, page } = await loggedIn(chromium.browser, TOKEN_A);
  const listing = await api(TOKEN_A, "GET", "/executions?limit=1");
  const pages = [
    "/ui/executions",
    `/ui/executions/${listing.executions[0].execution_id}`,
    "/ui/catalog",
    "/ui/catalog/console-long",
    "/ui/topology",
    `/ui/topology?id=${listing.executions[0].execution_id}`,
  ];
  const found = {};
  for (const path of pages) {
    await page.goto(`${BASE}${path}`);
    const violations = await seriousViolations(page);
    if (violations.length) found[path] = violations;
  }
  await context.close();
  const login = await chromium.browser.newPage();
  await login.goto(`${BASE}/ui/login`);
  await screenshot(login, "login");
  const loginViolations = await seriousViolations(login);
  if (loginViolations.length) found["/ui/login"] = loginViolations;
  await login.close();
  assert.deepEqual(found, {});
});

test("forms need the session's CSRF token and the console's own pages; headers and logs", async () => {
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  const running = await api(TOKEN_A, "POST", "/executions", {
    playbook: { name: "console-long" },
  });
  const cancel = `${BASE}/ui/executions/${running.execution_id}/cancel`;
  // The session cookie goes along (page.request shares the context's cookies).
  const forged = await page.request.post(cancel, { form: { csrf: "0".repeat(64) } });
  assert.equal(forged.status(), 403, "a wrong CSRF token");
  const missing = await page.request.post(cancel, { form: {} });
  assert.ok([400, 403, 422].includes(missing.status()), `no CSRF token: ${missing.status()}`);
  await page.goto(`${BASE}/ui/executions/${running.execution_id}`);
  const csrf = await page.locator("form.logout input[name='csrf']").getAttribute("value");
  const foreign = await page.request.post(cancel, {
    form: { csrf },
    headers: { "sec-fetch-site": "cross-site" },
  });
  assert.equal(foreign.status(), 403, "a form another site sent");
  const untouched = await api(TOKEN_A, "GET", `/executions/${running.execution_id}`);
  assert.notEqual(untouched.status, "cancelled", "no refused form cancelled it");
  const ok = await page.request.post(cancel, { form: { csrf }, maxRedirects: 0 });
  assert.equal(ok.status(), 303, "the session's own token cancels");

  // Every console response carries the CSP; the hashed assets are cached for good.
  const html = await page.request.get(`${BASE}/ui/executions`);
  assert.equal(
    html.headers()["content-security-policy"],
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
      "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
  );
  assert.equal(html.headers()["cache-control"], "no-store");
  const script = await page.locator("script").getAttribute("src");
  assert.match(script, /^\/ui\/assets\/console\.[0-9a-f]{12}\.js$/);
  const asset = await page.request.get(`${BASE}${script}`);
  assert.match(asset.headers()["cache-control"], /immutable/);
  assert.ok(asset.headers()["content-security-policy"]);

  // A wrong token does not log in; logging out ends the session.
  const wrong = await chromium.browser.newPage();
  await wrong.goto(`${BASE}/ui/login`);
  await wrong.getByLabel("API token").fill("ntl_not_a_token");
  await wrong.getByRole("button", { name: "Log in" }).click();
  await wrong.getByText("That token is not valid.").waitFor();
  assert.equal((await wrong.context().cookies(`${BASE}/ui/executions`)).length, 0);
  await wrong.close();
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(/\/ui\/login$/);
  await page.goto(`${BASE}/ui/executions`);
  assert.match(page.url(), /\/ui\/login$/, "the session is gone");

  // The token is in no log line of the cluster (the login is logged by the token's name).
  const logs = readdirSync(path.join(STATE_DIR, "logs"))
    .map((file) => readFileSync(path.join(STATE_DIR, "logs", file), "utf8"));
  assert.ok(logs.some((log) => log.includes("console login")), "the login is logged");
  assert.ok(!logs.some((log) => log.includes(TOKEN_A) || log.includes(TOKEN_B)), "no token in a log");
  assert.ok(trouble.every((entry) => entry.includes("403")), trouble.join("\n"));
  await context.close();
});

test("the keyboard reaches the skip link, the links and cancel with its confirmation", async () => {
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  const running = await api(TOKEN_A, "POST", "/executions", { playbook: { name: "console-long" } });
  await page.goto(`${BASE}/ui/executions/${running.execution_id}`);
  const focused = () => page.evaluate(() => document.activeElement.textContent.trim());
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "Skip to content");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "version 1", "the first link of the page: its playbook");
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "Cancel this execution…");
  await page.keyboard.press("Enter");
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "Confirm: cancel execution");
  await page.keyboard.press("Enter");
  await page.waitForURL(new RegExp(`/ui/executions/${running.execution_id}$`));
  await page.locator("#exec-status .badge", { hasText: "cancelled" }).waitFor({ timeout: 30_000 });
  assert.deepEqual(trouble, []);
  await context.close();
});

// Log in, run a catalog playbook from its form, and watch its DAG turn succeeded without a
// reload. The worker is stopped while the page first renders, so the steps are certainly not
// finished then; it is started again once the page has shown them unfinished.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BASE, TOKEN_A, api, cluster, dagStatuses, ended, loggedIn, publish, runFromCatalog, screenshot,
  sharedChromium, stopComponent,
} from "./helpers.mjs";

const chromium = sharedChromium();

test("log in, run from the catalog, the DAG turns succeeded live", async () => {
  await publish(TOKEN_A, {
    name: "console-diamond",
    steps: [
      { name: "a", action: "noop" },
      { name: "b", action: "sleep", with: { ms: 100 }, needs: ["a"] },
      { name: "c", action: "noop", with: { who: "{{ input.who }}" }, needs: ["a"] },
      { name: "d", action: "noop", needs: ["b", "c"] },
    ],
  });
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);

  // The session cookie: HttpOnly, SameSite=Strict, scoped to /ui, and not the token.
  const cookies = await context.cookies(`${BASE}/ui/executions`);
  const session = cookies.find((cookie) => cookie.name === "noetl_session");
  assert.ok(session, "a session cookie is set");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(session.path, "/ui");
  assert.ok(!session.value.includes(TOKEN_A), "the cookie is not the token");

  await stopComponent("worker");
  const id = await runFromCatalog(page, "console-diamond", '{"who": "console"}');
  assert.ok(!page.url().includes(TOKEN_A), "the token is never in a URL");
  await page.evaluate(() => { window.notReloaded = true; });
  const first = await dagStatuses(page);
  assert.deepEqual(Object.keys(first).sort(), ["a", "b", "c", "d"]);
  assert.ok(Object.values(first).every((status) => status !== "succeeded"), JSON.stringify(first));
  // Drawn as siblings: an SVG element left unclosed in HTML would swallow the next ones.
  assert.equal(await page.locator("svg.dag g.edges > path.edge").count(), 4, "a→b, a→c, b→d, c→d");
  assert.deepEqual(await page.locator("svg.dag g.node > text").allTextContents(), ["a", "b", "c", "d"]);

  cluster(["up"]); // starts the worker again (everything else still runs)
  await page.waitForFunction(
    () => {
      const nodes = [...document.querySelectorAll("svg.dag [data-step]")];
      return nodes.length === 4 && nodes.every((node) => node.dataset.status === "succeeded");
    },
    null,
    { timeout: 60_000 },
  );
  await page.locator("#exec-status .badge", { hasText: "succeeded" }).waitFor();
  // The overview is swapped for the final one: nothing left to cancel.
  await page.locator("details.cancel").waitFor({ state: "detached" });
  assert.equal(await page.evaluate(() => window.notReloaded), true, "no reload happened");
  // Once the stream ended, the steps table shows the results.
  await page.locator("#steps tr[data-step='c'] pre", { hasText: "console" }).first().waitFor();
  const timeline = await page.locator("#timeline li").allTextContents();
  assert.ok(timeline.some((entry) => entry.includes("execution_succeeded")), timeline.join("\n"));

  const execution = await (await fetch(`${BASE}/api/v1/executions/${id}`, {
    headers: { authorization: `Bearer ${TOKEN_A}` },
  })).json();
  assert.equal(execution.status, "succeeded");
  await screenshot(page, "execution");
  await page.goto(`${BASE}/ui/executions`);
  await screenshot(page, "executions");
  await page.goto(`${BASE}/ui/catalog/console-diamond`);
  await screenshot(page, "catalog");
  assert.deepEqual(trouble, []);
  await context.close();
});

test("the listing refreshes itself, one listing request at a time", async () => {
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  let open = 0;
  let mostAtOnce = 0;
  let asked = 0;
  const listing = (request) => new URL(request.url()).pathname === "/ui/executions";
  page.on("request", (request) => {
    if (!listing(request)) return;
    asked += 1;
    open += 1;
    mostAtOnce = Math.max(mostAtOnce, open);
  });
  const done = (request) => {
    if (listing(request)) open -= 1;
  };
  page.on("requestfinished", done);
  page.on("requestfailed", done);
  await page.evaluate(() => { window.notReloaded = true; });
  const before = asked;
  const { execution_id: id } = await api(TOKEN_A, "POST", "/executions", {
    playbook: { name: "console-diamond" },
    labels: { fresh: "yes" },
  });
  await page.locator(`[data-execution="${id}"]`).waitFor({ timeout: 30_000 });
  assert.equal(await page.evaluate(() => window.notReloaded), true, "no reload happened");
  assert.ok(asked > before, "the page asked for the listing again");
  assert.equal(mostAtOnce, 1, "never two listing requests at once");
  assert.deepEqual(trouble, []);
  await context.close();
});

test("the catalog shows every version and its source; a bad input is refused in the form", async () => {
  await publish(TOKEN_A, {
    name: "console-versions",
    steps: [{ name: "first", action: "noop" }],
  });
  await publish(TOKEN_A, {
    name: "console-versions",
    steps: [{ name: "second", action: "noop" }],
  });
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  await page.goto(`${BASE}/ui/catalog/console-versions`);
  assert.match(await page.locator("nav.versions").innerText(), /Versions: 2 1/);
  assert.match(await page.locator("#source").innerText(), /"second"/);
  await page.getByRole("link", { name: "1", exact: true }).click();
  await page.waitForURL(/\?version=1$/);
  assert.match(await page.locator("#source").innerText(), /"first"/);

  await page.getByLabel("Input (a JSON object)").fill("[1, 2");
  await page.getByRole("button", { name: "Run" }).click();
  assert.match(await page.getByRole("alert").innerText(), /input:/);
  assert.equal(await page.getByLabel("Input (a JSON object)").inputValue(), "[1, 2", "the input is kept");
  assert.ok(trouble.every((entry) => entry.includes("400")), trouble.join("\n"));
  await context.close();
});

test("a loop shows its items as k/N, and parent and child link to each other", async () => {
  const submitted = await api(TOKEN_A, "POST", "/executions", {
    playbook: {
      name: "console-tree",
      input: { files: ["x", "y", "z"] },
      steps: [
        { name: "each", action: "noop", with: { f: "{{ f }}" },
          loop: { in: "{{ input.files }}", iterator: "f", max_in_flight: 2 } },
        { name: "kid", action: "playbook", needs: ["each"],
          with: { playbook: { name: "console-leaf", steps: [{ name: "n", action: "noop" }] } } },
      ],
    },
  });
  const parent = submitted.execution_id;
  const done = await ended(TOKEN_A, parent, 60);
  assert.equal(done.status, "succeeded", JSON.stringify(done.steps));
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  await page.goto(`${BASE}/ui/executions/${parent}`);
  assert.equal(await page.locator("#steps tr[data-step='each'] .loop").textContent(), "loop 3/3");
  const child = done.steps.find((step) => step.name === "kid").child_id;
  assert.ok(child, JSON.stringify(done.steps));
  assert.equal(await page.locator("#exec-children a").allTextContents().then((t) => t.join(",")), child);
  await page.locator("#steps tr[data-step='kid'] a.child").click();
  await page.waitForURL(new RegExp(`/ui/executions/${child}$`));
  assert.equal(await page.locator("#exec-parent").textContent(), parent);
  await page.locator("#exec-parent").click();
  await page.waitForURL(new RegExp(`/ui/executions/${parent}$`));
  assert.deepEqual(trouble, []);
  await context.close();
});

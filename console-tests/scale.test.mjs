// An execution of 1,000 steps renders; its time to first render and page weight are printed as
// figures, not asserted.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BASE, TOKEN_A, api, ended, loggedIn, publish, sharedChromium } from "./helpers.mjs";

const chromium = sharedChromium();

test("an execution of 1,000 steps renders", async () => {
  // 100 chains of 10 steps: 10 layers of 100, 900 arcs.
  const steps = [];
  for (let layer = 0; layer < 10; layer++) {
    for (let chain = 0; chain < 100; chain++) {
      steps.push({
        name: `s${layer}-${chain}`,
        action: "noop",
        ...(layer > 0 ? { needs: [`s${layer - 1}-${chain}`] } : {}),
      });
    }
  }
  await publish(TOKEN_A, { name: "console-thousand", steps });
  const submitted = await api(TOKEN_A, "POST", "/executions", { playbook: { name: "console-thousand" } });
  const id = submitted.execution_id;
  const execution = await ended(TOKEN_A, id, 300);
  assert.equal(execution.status, "succeeded");

  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  const started = Date.now();
  await page.goto(`${BASE}/ui/executions/${id}`);
  const loaded = Date.now() - started;
  assert.equal(await page.locator("svg.dag [data-step]").count(), 1000);
  assert.equal(await page.locator("svg.dag g.edges > path.edge").count(), 900);
  assert.equal(await page.locator("svg.dag [data-status='succeeded']").count(), 1000);
  assert.equal(await page.locator("#steps tbody tr").count(), 1000);
  const figures = await page.evaluate(() => {
    const navigation = performance.getEntriesByType("navigation")[0];
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    const resources = performance.getEntriesByType("resource");
    return {
      responseEnd: navigation.responseEnd,
      domContentLoaded: navigation.domContentLoadedEventEnd,
      firstContentfulPaint: paint ? paint.startTime : null,
      htmlBytes: navigation.decodedBodySize,
      transferBytes: navigation.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
    };
  });
  const kib = (bytes) => `${(bytes / 1024).toFixed(0)} KiB`;
  console.log(
    `FIGURES 1,000-step execution page: first contentful paint ${figures.firstContentfulPaint?.toFixed(0)} ms, ` +
      `HTML received ${figures.responseEnd.toFixed(0)} ms, DOMContentLoaded ${figures.domContentLoaded.toFixed(0)} ms, ` +
      `load ${loaded} ms; HTML ${kib(figures.htmlBytes)}, transferred ${kib(figures.transferBytes)} ` +
      "(uncompressed: the gateway does not compress)",
  );
  assert.deepEqual(trouble, []);
  await context.close();
});

// After a reshard from 2 to 4 shards the topology page shows two epochs; with one shard's server
// stopped, the listing says it is partial and names that shard. Runs last: it changes the cluster.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BASE, TOKEN_A, api, cluster, loggedIn, screenshot, stopComponent, sharedChromium } from "./helpers.mjs";

const chromium = sharedChromium();

test("reshard 2 → 4: the topology page shows two epochs, then a stopped shard makes the listing partial", async () => {
  const { context, page, trouble } = await loggedIn(chromium.browser, TOKEN_A);
  // A running execution of this tenant counts on its shard.
  const { execution_id: running } = await api(TOKEN_A, "POST", "/executions", {
    playbook: { name: "console-long" },
  });
  const { shard } = await api(TOKEN_A, "GET", `/route/${running}`);
  await page.goto(`${BASE}/ui/topology`);
  assert.equal(await page.locator("#epochs li").count(), 1);
  const counted = await page.locator(`#shards tr[data-shard='${shard}'] td.running`).innerText();
  assert.ok(Number(counted) >= 1, `shard ${shard} runs ${counted} of this tenant's executions`);

  cluster(["reshard"], { SHARDS: "4" });
  const topology = await api(TOKEN_A, "GET", "/topology");
  assert.equal(topology.epochs.length, 2);
  await page.goto(`${BASE}/ui/topology`);
  const epochs = page.locator("#epochs li");
  assert.equal(await epochs.count(), 2);
  const second = await epochs.nth(1).innerText();
  assert.match(second, /Epoch \d+: 4 shards from \d{4}-\d\d-\d\dT/);
  const activates = new Date(topology.epochs[1].activate_at_ms).toISOString().slice(0, 19);
  assert.ok(second.includes(activates), `${second} names ${activates}`);
  assert.equal(await page.locator("#shards tbody tr").count(), 4);

  // Where does this id go: the answer names the shard the API names.
  const listing = await api(TOKEN_A, "GET", "/executions?limit=1");
  const id = listing.executions[0].execution_id;
  const route = await api(TOKEN_A, "GET", `/route/${id}`);
  await page.getByLabel("Execution id").fill(id);
  await page.getByRole("button", { name: "Route" }).click();
  assert.match(await page.locator("#route-answer").innerText(), new RegExp(`goes to shard ${route.shard} \\(epoch ${route.epoch}`));
  await screenshot(page, "topology");

  await stopComponent("server-3");
  await page.goto(`${BASE}/ui/executions`);
  const partial = page.locator("#partial");
  await partial.waitFor();
  assert.match(await partial.innerText(), /Partial listing: shard 3 did not answer/);
  assert.deepEqual(await page.locator("#partial .missing-shard").allTextContents(), ["3"]);
  await page.goto(`${BASE}/ui/topology`);
  assert.match(await page.locator("#shards tr[data-shard='3']").innerText(), /not answering\s+unknown/);
  assert.deepEqual(trouble, []);
  await context.close();
});

// A gateway keeps at most 10,000 console sessions: logging in 10,001 times evicts the oldest,
// and the newest still works (wiki/console.md, "Authentication and sessions").
import assert from "node:assert/strict";
import { test } from "node:test";

import { BASE, TOKEN_B } from "./helpers.mjs";

const MAX_SESSIONS = 10_000;

/// Logs in with the form; returns the session cookie (`noetl_session=…`).
async function login() {
  const response = await fetch(`${BASE}/ui/login`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: TOKEN_B }),
    redirect: "manual",
  });
  assert.equal(response.status, 303);
  return response.headers.get("set-cookie").split(";")[0];
}

/// Whether a session cookie still opens a page (rather than sending to the login form).
async function works(cookie) {
  const response = await fetch(`${BASE}/ui/catalog`, { headers: { cookie }, redirect: "manual" });
  return response.status === 200;
}

test("logins past the session cap evict the oldest session", async () => {
  const oldest = await login();
  assert.ok(await works(oldest));
  // The rest of the cap, 16 logins at a time (other test files' sessions may be among the
  // 10,000 too: they are older still, so they go first).
  let left = MAX_SESSIONS;
  const workers = Array.from({ length: 16 }, async () => {
    while (left > 0) {
      left -= 1;
      await login();
    }
  });
  await Promise.all(workers);
  const newest = await login();
  assert.equal(await works(oldest), false, "the oldest session was evicted");
  assert.equal(await works(newest), true, "the newest session works");
});

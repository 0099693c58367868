// Adds COUNT no-op graphile-worker jobs from CONCURRENCY concurrent loops, waits until the
// runner has done them all, asks it for its latencies, and prints one JSON line like
// celery_driver.py: seconds from the first add to the last job done, latencies in ms, failures.
//
// usage: node graphile_driver.js CONNECTION_STRING COUNT CONCURRENCY REPORT_FILE
"use strict";
const fs = require("fs");
const { Pool } = require("pg");
const { makeWorkerUtils } = require("graphile-worker");

const DEADLINE_MS = 600000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const [connectionString, count, concurrency, reportFile] = process.argv.slice(2);
  const pgPool = new Pool({ connectionString, max: Number(concurrency) + 1 });
  // The runner installs the schema; migrating here too raced with it on a fresh database.
  for (const waitStarted = Date.now(); ; ) {
    const { rows } = await pgPool.query("SELECT to_regclass('graphile_worker.jobs') AS jobs");
    if (rows[0].jobs !== null) break;
    if (Date.now() - waitStarted > 60000) throw new Error("the runner never installed its schema");
    await sleep(100);
  }
  const utils = await makeWorkerUtils({ pgPool });
  fs.rmSync(reportFile, { force: true });
  const started = Date.now();
  let next = 0;
  const loop = async () => {
    while (next < Number(count)) {
      next += 1;
      await utils.addJob("noop", {});
    }
  };
  await Promise.all(Array.from({ length: Number(concurrency) }, loop));
  for (;;) {
    const { rows } = await pgPool.query("SELECT count(*)::int AS n FROM graphile_worker.jobs");
    if (rows[0].n === 0) break;
    if (Date.now() - started > DEADLINE_MS) throw new Error(`${rows[0].n} jobs still queued`);
    await sleep(20);
  }
  await utils.addJob("report", { file: reportFile });
  while (!fs.existsSync(reportFile)) {
    if (Date.now() - started > DEADLINE_MS) throw new Error("the runner never reported");
    await sleep(20);
  }
  await sleep(20);
  const report = JSON.parse(fs.readFileSync(reportFile, "utf8"));
  console.log(
    JSON.stringify({
      seconds: (report.last_end_ms - started) / 1000,
      latencies_ms: report.latencies_ms,
      failed: Number(count) - report.latencies_ms.length,
    }),
  );
  await utils.release();
  await pgPool.end();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

// graphile-worker peer of the benchmark: a runner with CONCURRENCY jobs at once and a no-op task.
// graphile-worker deletes a job once it succeeded, so the runner itself notes each no-op's
// created-to-done latency; a `report` job writes them (and the last end) to a file and resets.
//
// usage: node graphile_worker.js CONNECTION_STRING CONCURRENCY   (NODE_PATH has graphile-worker)
"use strict";
const fs = require("fs");
const { run } = require("graphile-worker");

// Starting can fail while the database is still settling: try again for a while.
async function start(options) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await run(options);
    } catch (error) {
      if (attempt >= 30) throw error;
      console.error(`graphile-worker did not start (attempt ${attempt}): ${error}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function main() {
  const [connectionString, concurrency] = process.argv.slice(2);
  let latencies = [];
  let lastEnd = 0;
  const runner = await start({
    connectionString,
    concurrency: Number(concurrency),
    pollInterval: 1000,
    logger: undefined,
    taskList: {
      noop: async () => {},
      report: async ({ file }) => {
        // job:success of the last no-ops may still be on its way.
        await new Promise((resolve) => setTimeout(resolve, 50));
        fs.writeFileSync(`${file}.tmp`, JSON.stringify({ latencies_ms: latencies, last_end_ms: lastEnd }));
        fs.renameSync(`${file}.tmp`, file);
        latencies = [];
        lastEnd = 0;
      },
    },
  });
  runner.events.on("job:success", ({ job }) => {
    if (job.task_identifier === "noop") {
      const now = Date.now();
      latencies.push(now - new Date(job.created_at).getTime());
      lastEnd = now;
    }
  });
  await runner.promise;
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

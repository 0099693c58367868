"""Submits COUNT no-op Celery tasks from CONCURRENCY threads, waits until every result is
stored, and prints one JSON line: seconds from the first submit to the last `date_done`,
submit-to-done latencies in ms, and the number of tasks that did not succeed.

usage: celery_driver.py COUNT CONCURRENCY   (BENCH_REDIS_URL names the private redis-server)
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import redis

from celery_app import REDIS, noop

DEADLINE_SECONDS = 600


def done_at(meta):
    done = datetime.fromisoformat(meta["date_done"])
    if done.tzinfo is None:
        done = done.replace(tzinfo=timezone.utc)
    return done.timestamp()


def main():
    count, concurrency = int(sys.argv[1]), int(sys.argv[2])
    results = redis.Redis.from_url(f"{REDIS}/1")
    results.flushdb()
    sent = {}

    def submit(_):
        at = time.time()
        sent[noop.apply_async().id] = at

    started = time.time()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(submit, range(count)))
    while results.dbsize() < count:
        if time.time() - started > DEADLINE_SECONDS:
            sys.exit(f"only {results.dbsize()} of {count} tasks finished")
        time.sleep(0.02)
    ids = list(sent)
    metas = [json.loads(m) for m in results.mget([f"celery-task-meta-{i}" for i in ids])]
    ends = [done_at(m) for m in metas]
    print(
        json.dumps(
            {
                "seconds": max(ends) - started,
                "latencies_ms": [(end - sent[i]) * 1000 for i, end in zip(ids, ends)],
                "failed": sum(1 for m in metas if m["status"] != "SUCCESS"),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Celery peer of the benchmark: one no-op task, Redis as broker (db 0) and result backend (db 1).

The result backend stores each task's state and `date_done`, the counterpart of the dispatcher
recording a step's result in its shard database; the driver reads latencies from it.
"""

import os

from celery import Celery

REDIS = os.environ["BENCH_REDIS_URL"]

app = Celery("bench", broker=f"{REDIS}/0", backend=f"{REDIS}/1")
app.conf.update(
    task_ignore_result=False,
    result_expires=None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop():
    return None

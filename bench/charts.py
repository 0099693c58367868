"""Draws the PNG charts of one noetl-bench run from its results.json (matplotlib, no display).

usage: charts.py RESULTS_JSON OUT_DIR
- throughput_vs_concurrency.png: submits/s per shard count, end-to-end executions/s per shard
  count and worker concurrency, and the peers' tasks/s, against client concurrency;
- latency_percentiles.png: p50/p90/p99/p99.9 of submits and of each end-to-end scenario at the
  highest client concurrency, per shard count (and worker concurrency: w2 is 2);
- growth.png: submit latency, CPU per 1,000 submits and first-page listing latency as one
  shard fills.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def throughput(results, out):
    kinds = ["submit", "noop-1", "chain-5", "fan-out-10"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(16, 4), sharex=True)
    for ax, kind in zip(axes, kinds):
        shard_counts = sorted({r["shards"] for r in results["submit"]})
        for shards in shard_counts:
            if kind == "submit":
                runs = [r for r in results["submit"] if r["shards"] == shards and r["target_rate"] is None]
                xs = [r["client_concurrency"] for r in runs]
                ys = [r["phase"]["per_second"] for r in runs]
                ax.plot(xs, ys, marker="o", label=f"{shards} shard(s)")
                continue
            for workers in sorted({e["worker_concurrency"] for e in results["e2e"]}):
                runs = [
                    e
                    for e in results["e2e"]
                    if e["shards"] == shards and e["name"] == kind and e["worker_concurrency"] == workers
                ]
                xs = [e["client_concurrency"] for e in runs]
                ys = [e["executions_per_second"] for e in runs]
                ax.plot(xs, ys, marker="o", label=f"{shards} shard(s), worker concurrency {workers}")
        if kind == "noop-1" and results.get("peers"):
            for peer in results["peers"]["peers"]:
                runs = peer["runs"]
                if runs:
                    ax.plot(
                        [r["client_concurrency"] for r in runs],
                        [r["executions_per_second"] for r in runs],
                        marker="s",
                        linestyle="--",
                        label=f"{peer['name'].split(' (')[0]}, worker concurrency {peer['worker_concurrency']}",
                    )
        ax.set_xscale("log", base=2)
        ticks = sorted({r["client_concurrency"] for r in results["submit"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_ylim(bottom=0)
        ax.set_title(f"{kind}: {'submits' if kind == 'submit' else 'executions'}/s")
        ax.set_xlabel("client concurrency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=80)
    plt.close(fig)


def latency(results, out):
    quantiles = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
    rows = []
    top = max((r["client_concurrency"] for r in results["submit"]), default=1)
    for r in results["submit"]:
        if r["target_rate"] is None and r["client_concurrency"] == top:
            rows.append((f"submit s{r['shards']}", r["phase"]["latency"]))
        elif r["target_rate"] is not None:
            rows.append((f"submit ½peak s{r['shards']}", r["phase"]["latency"]))
    for e in results["e2e"]:
        if e["client_concurrency"] == top:
            rows.append((f"{e['name']} s{e['shards']} w{e['worker_concurrency']}", e["e2e"]))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4.5))
    width = 0.8 / len(quantiles)
    for i, (key, label) in enumerate(quantiles):
        ax.bar([x + i * width for x in range(len(rows))], [max(r[1][key], 0.01) for r in rows], width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels([r[0] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"latency at {top} clients (end to end: submit → terminal)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_percentiles.png", dpi=80)
    plt.close(fig)


def growth(results, out):
    g = results.get("growth")
    if not g or not g["points"]:
        return
    stored = [p["stored_executions"] / 1e6 for p in g["points"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in [("p50_ms", "p50"), ("p99_ms", "p99")]:
        axes[0].plot(stored, [p["submit"]["phase"]["latency"][key] for p in g["points"]], marker="o", label=f"submit {label}")
        axes[2].plot(stored, [p["list_first_page"]["latency"][key] for p in g["points"]], marker="o", label=f"list {label}")
    axes[1].plot(stored, [p["submit"]["cpu_seconds_per_1000_total"] for p in g["points"]], marker="o", color="C3", label="as fast as possible")
    axes[1].plot(stored, [p["paced_submit"]["cpu_seconds_per_1000_total"] for p in g["points"]], marker="o", color="C2", label=f"paced to {g['paced_rate']:.0f}/s")
    axes[0].set_title("submit latency (ms)")
    axes[1].set_title("CPU s per 1,000 submits (all processes)")
    axes[1].set_ylim(bottom=0)
    axes[2].set_title("first page of the listing (ms)")
    for ax in axes:
        ax.set_xlabel("stored executions in the shard (millions)")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "growth.png", dpi=80)
    plt.close(fig)


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    throughput(results, out)
    latency(results, out)
    growth(results, out)


if __name__ == "__main__":
    main()

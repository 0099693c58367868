"""Checks the Grafana dashboard against the metrics the Rust code emits, so neither drifts.

    python3 check_dashboard.py [--repo DIR] [--dashboard FILE] [--docs FILE]

Defaults: deploy/grafana/noetl-dispatch.json and wiki/operations.md in --repo (the repository
this file is in).

The metrics are the `metrics::counter!`, `gauge!` and `histogram!` calls (name and label keys)
in the src/ trees of the crates whose processes serve /metrics: gateway, server, worker, bus,
service. The queries are every panel target's `expr` and every query variable's query.
Python 3 standard library only. Run by scripts/validate-deploy.sh; prints what it read and one
line per failure; exits 1 if any check failed.

The rules:
- names: every `noetl_*` metric a query names is one the code emits (X_sum and X_count name the
  histogram X); every metric the code emits is named by some panel, so a new metric gets a panel.
- labels: a selector's matchers, `by`/`without` lists and `label_values(metric, label)` use only
  labels of the metrics in that query (the macro's label keys), `quantile` (summaries), or the
  labels Prometheus adds to a target (instance, job, and pod, namespace from Kubernetes discovery).
- histograms: the recorder (install_metrics in service/src/lib.rs) is built without buckets (no
  `set_buckets` in those crates), so metrics-exporter-prometheus renders histograms as summaries:
  quantiles are `X{quantile="0.99"}`, and `histogram_quantile` or `X_bucket` would show nothing.
  If the code ever sets buckets, this rule turns around (then `X_bucket` and no `quantile` label).
- docs: the table of the section "Metrics and dashboard" in wiki/operations.md has one row per
  metric the code emits and none other, with its type and its labels (`none` when it has none).
- structure: JSON with uid, title and schemaVersion; a `datasource` variable of type prometheus
  that every panel uses as `${datasource}`; a `shard` variable; unique panel ids; panels inside
  the 24 columns, not overlapping.
"""

import argparse
import json
import os
import re
import sys

from report import Report

CRATES = ("gateway", "server", "worker", "bus", "service")
MACRO = re.compile(r"\b(?:metrics::)?(counter|gauge|histogram)!\s*\(\s*\"([A-Za-z_:][A-Za-z0-9_:]*)\"")
LABEL_KEY = re.compile(r"\"([A-Za-z_][A-Za-z0-9_]*)\"\s*=>")
TARGET_LABELS = {"instance", "job", "pod", "namespace"}
STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
METRIC_TOKEN = re.compile(r"\bnoetl_[A-Za-z0-9_]*")
SELECTOR = re.compile(r"\b(noetl_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\s*\(\s*(noetl_[A-Za-z0-9_]*)[^,)]*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
SUFFIXES = ("_bucket", "_sum", "_count")


def display_path(path):
    """A path as the reader ran it: relative when under the working directory."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class Metric:
    def __init__(self, kind):
        self.kind = kind
        self.labels = set()
        self.labels_known = True
        self.sites = []


def macro_arguments(text, start):
    """The text of a macro call's arguments from `start` (just after the name literal) to its
    closing parenthesis, skipping string literals."""
    depth = 1
    i = start
    while i < len(text) and depth:
        c = text[i]
        if c == "\"":
            i += 1
            while i < len(text) and text[i] != "\"":
                i += 2 if text[i] == "\\" else 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    return text[start:i - 1]


def emitted_metrics(report, repo):
    """name -> Metric, from every macro call in the crates' src/ trees."""
    metrics = {}
    files = 0
    for crate in CRATES:
        for root, _, names in os.walk(os.path.join(repo, crate, "src")):
            for name in sorted(names):
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(root, name)
                files += 1
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                for match in MACRO.finditer(text):
                    kind, metric = match.group(1), match.group(2)
                    line = text.count("\n", 0, match.start()) + 1
                    site = "%s:%d" % (os.path.relpath(path, repo), line)
                    known = metrics.setdefault(metric, Metric(kind))
                    report.check(known.kind == kind, "%s: %s is a %s here but a %s at %s"
                                 % (site, metric, kind, known.kind, known.sites[0] if known.sites else "?"))
                    known.sites.append(site)
                    arguments = macro_arguments(text, match.end())
                    keys = LABEL_KEY.findall(arguments)
                    known.labels.update(keys)
                    # Labels passed as a variable (a Vec<Label>, a slice) cannot be read here.
                    if not keys and arguments.strip(" \t\n,"):
                        known.labels_known = False
    print("code: %d metrics in %d files under %s/src" % (len(metrics), files, "/src, ".join(CRATES)))
    return metrics


def histogram_rendering(repo):
    """'summary', 'histogram', or None when buckets are set per metric (not decidable here)."""
    text = ""
    for crate in CRATES:
        for root, _, names in os.walk(os.path.join(repo, crate, "src")):
            for name in names:
                if name.endswith(".rs"):
                    with open(os.path.join(root, name), encoding="utf-8") as f:
                        text += f.read()
    if "set_buckets_for_metric" in text:
        return None
    return "histogram" if re.search(r"\bset_buckets\s*\(", text) else "summary"


def walk_panels(panels):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def queries(dashboard):
    """(where, query) for every panel target and every query variable."""
    for panel in walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield "panel %r %s" % (panel.get("title"), target.get("refId", "?")), target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            yield "variable %r" % variable.get("name"), query or ""


def resolve(token, metrics):
    """(metric, suffix) for a name in a query: the emitted metric itself, or a histogram's series."""
    if token in metrics:
        return token, ""
    for suffix in SUFFIXES:
        base = token[:-len(suffix)]
        if token.endswith(suffix) and metrics.get(base) and metrics[base].kind == "histogram":
            return base, suffix
    return None, None


def check_query(report, where, query, metrics, rendering):
    """Checks one query; returns the emitted metrics it names."""
    bare = STRING.sub("\"\"", query)
    named = set()
    for token in METRIC_TOKEN.findall(bare):
        metric, suffix = resolve(token, metrics)
        if not report.check(metric is not None, "%s: %s is not emitted by the code" % (where, token)):
            continue
        named.add(metric)
        if metrics[metric].kind != "histogram" or rendering is None:
            continue
        if rendering == "summary":
            report.check(suffix != "_bucket", "%s: %s: histograms render as summaries (no buckets are set), "
                         "there is no %s" % (where, token, token))
        else:
            report.check(suffix != "", "%s: %s: histograms render with buckets, use %s_bucket, _sum or _count"
                         % (where, token, token))
    if rendering == "summary":
        report.check("histogram_quantile" not in bare,
                     "%s: histogram_quantile, but histograms render as summaries: select quantile=\"…\"" % where)

    def allowed(metric_names):
        labels = set(TARGET_LABELS)
        for name in metric_names:
            labels |= metrics[name].labels
            if metrics[name].kind == "histogram" and rendering == "summary":
                labels.add("quantile")
            if metrics[name].kind == "histogram" and rendering == "histogram":
                labels.add("le")
        return labels

    every_label_known = all(metrics[m].labels_known for m in named)
    for token, matchers in SELECTOR.findall(bare):
        metric, _ = resolve(token, metrics)
        if metric is None or not metrics[metric].labels_known:
            continue
        for label in MATCHER.findall(matchers):
            report.check(label in allowed([metric]), "%s: %s has no label %r (it has %s)"
                         % (where, token, label, ", ".join(sorted(metrics[metric].labels)) or "none"))
    for token, label in LABEL_VALUES.findall(bare):
        metric, _ = resolve(token, metrics)
        if metric is not None and metrics[metric].labels_known:
            report.check(label in allowed([metric]), "%s: label_values: %s has no label %r" % (where, token, label))
    if every_label_known:
        for grouping in GROUPING.findall(bare):
            for label in filter(None, (l.strip() for l in grouping.split(","))):
                report.check(label in allowed(named), "%s: groups by %r, which none of %s has"
                             % (where, label, ", ".join(sorted(named))))
    return named


def check_structure(report, dashboard):
    for key in ("uid", "title", "schemaVersion"):
        report.check(key in dashboard, "dashboard: no %s" % key)
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource", {})
    report.check(datasource.get("type") == "datasource" and datasource.get("query") == "prometheus",
                 "dashboard: no variable `datasource` of type datasource with query prometheus")
    report.check(variables.get("shard", {}).get("type") == "query", "dashboard: no query variable `shard`")
    ids = {}
    for panel in walk_panels(dashboard.get("panels", [])):
        title = panel.get("title")
        report.check(panel.get("id") not in ids, "panel %r: id %s is also panel %r's"
                     % (title, panel.get("id"), ids.get(panel.get("id"))))
        ids[panel.get("id")] = title
        if panel.get("type") != "row":
            report.check(bool(panel.get("targets")), "panel %r: no queries" % title)
            uid = panel.get("datasource", {}).get("uid")
            report.check(uid == "${datasource}", "panel %r: datasource %r, not ${datasource}" % (title, uid))
    placed = []
    for panel in dashboard.get("panels", []):
        pos = panel.get("gridPos", {})
        x, y, w, h = (pos.get(k, -1) for k in ("x", "y", "w", "h"))
        title = panel.get("title")
        if not report.check(x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 24,
                            "panel %r: gridPos %s is not inside the 24 columns" % (title, pos)):
            continue
        for other, (ox, oy, ow, oh) in placed:
            report.check(x >= ox + ow or ox >= x + w or y >= oy + oh or oy >= y + h,
                         "panel %r overlaps panel %r" % (title, other))
        placed.append((title, (x, y, w, h)))


DOCS_SECTION = "## Metrics and dashboard"
DOCS_ROW = re.compile(r"^\|\s*`(noetl_[A-Za-z0-9_]*)`\s*\|([^|]*)\|([^|]*)\|")


def check_docs(report, path, metrics):
    """The metrics table in the docs against the code: names, types, labels."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.find("\n" + DOCS_SECTION + "\n")
    if not report.check(start >= 0, "%s: no section %r" % (path, DOCS_SECTION)):
        return
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    documented = {}
    for line in section.splitlines():
        row = DOCS_ROW.match(line)
        if not row:
            continue
        name, kind, labels = row.group(1), row.group(2).strip(), set(re.findall(r"`([^`]*)`", row.group(3)))
        where = "%s: row %s" % (display_path(path), name)
        report.check(name not in documented, "%s: listed twice" % where)
        documented[name] = True
        metric = metrics.get(name)
        if not report.check(metric is not None, "%s: the code emits no such metric" % where):
            continue
        report.check(kind == metric.kind, "%s: type %r, but the code records a %s" % (where, kind, metric.kind))
        if metric.labels_known:
            report.check(labels == metric.labels,
                         "%s: labels %s, but the code's are %s" % (where, ", ".join(sorted(labels)) or "none",
                                                                 ", ".join(sorted(metric.labels)) or "none"))
    for name in sorted(set(metrics) - set(documented)):
        report.check(False, "%s: %s (%s at %s) has no row in %r"
                     % (display_path(path), name, metrics[name].kind, metrics[name].sites[0], DOCS_SECTION))
    print("docs: %s: %d metrics in the table" % (display_path(path), len(documented)))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.path.normpath(os.path.join(here, "..", "..")))
    parser.add_argument("--dashboard", help="default: deploy/grafana/noetl-dispatch.json in --repo")
    parser.add_argument("--docs", help="default: wiki/operations.md in --repo")
    args = parser.parse_args()
    path = args.dashboard or os.path.join(args.repo, "deploy", "grafana", "noetl-dispatch.json")
    report = Report()
    metrics = emitted_metrics(report, args.repo)
    report.check(bool(metrics), "code: no metrics found (wrong --repo?)")
    rendering = histogram_rendering(args.repo)
    print("code: histograms render as %s" % {
        "summary": "summaries (no buckets set): quantile label, _sum, _count",
        "histogram": "histograms (buckets set): _bucket, _sum, _count",
        None: "per-metric buckets (set_buckets_for_metric): not checked"}[rendering])
    with open(path, encoding="utf-8") as f:
        try:
            dashboard = json.load(f)
        except json.JSONDecodeError as e:
            print("FAIL %s: not JSON: %s" % (path, e))
            sys.exit(1)
    check_structure(report, dashboard)
    shown = set()
    count = 0
    for where, query in queries(dashboard):
        count += 1
        named = check_query(report, where, query, metrics, rendering)
        if where.startswith("panel "):
            shown |= named
    print("dashboard: %s: %d panels, %d queries, naming %d metrics"
          % (display_path(path), sum(1 for p in walk_panels(dashboard.get("panels", []))
                                                   if p.get("type") != "row"), count, len(shown)))
    for metric in sorted(set(metrics) - shown):
        report.check(False, "%s (%s at %s) has no panel" % (metric, metrics[metric].kind, metrics[metric].sites[0]))
    check_docs(report, args.docs or os.path.join(args.repo, "wiki", "operations.md"), metrics)
    report.finish("dashboard")


if __name__ == "__main__":
    main()

"""Checks that the kind overlay fits one small node: the CPU and memory its pods request, with
kind's own pods and one extra pod of each Deployment during a rollout, within a node of 2 CPUs
and 2 GiB (colima's default VM, a small laptop's Docker VM).

    python check_kind_fit.py --kind render/kind.yaml --base render/base.yaml

Run by scripts/validate-deploy.sh on what `kubectl kustomize` rendered, with the venv that has
PyYAML. Prints the sum, per workload; exits 1 if a check failed.

The rules:
- fit: the requests of every pod the render runs (replicas times the pod's request: the sum of
  its containers', or its largest init container's if that is more), plus one surge pod of each
  Deployment (a rollout starts the new pod before the old one goes), plus kind's own pods
  (KIND_OWN below), stay within NODE_CPU_M and NODE_MEMORY_MI; the scheduler counts requests,
  not use, so a pod that does not fit stays Pending.
- limits: every container's limits are those of deploy/base (the overlay lowers requests only).
- no HorizontalPodAutoscaler: kind has no metrics-server, so a CPU autoscaler never scales.
"""

import argparse
import re

from report import Report, load_manifests

# The node: 2 CPUs, and of its 2 GiB what the kubelet can give pods. A 2 GiB VM reports about
# 1.9 GiB to the kubelet (the kernel keeps the rest); 10% is kept back for that.
NODE_CPU_M = 2000
NODE_MEMORY_MI = 2048 * 9 // 10

# What kind's own pods request on a one-node cluster of the node image deploy/kind/cluster.yaml
# pins (kind v0.25, Kubernetes 1.31): the kubeadm static pods, CoreDNS (2 replicas), kindnet;
# kube-proxy and local-path-provisioner request nothing.
KIND_OWN = [
    ("etcd", 100, 100),
    ("kube-apiserver", 250, 0),
    ("kube-controller-manager", 200, 0),
    ("kube-scheduler", 100, 0),
    ("coredns (2 pods)", 200, 140),
    ("kindnet", 100, 50),
]

CPU = re.compile(r"^([0-9.]+)(m?)$")
MEMORY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|)$")
MEMORY_MI = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024,
             "k": 1000 / 1048576, "M": 1e6 / 1048576, "G": 1e9 / 1048576, "T": 1e12 / 1048576, "": 1 / 1048576}


def cpu_m(value):
    m = CPU.match(str(value))
    if not m:
        raise ValueError("CPU quantity %r" % value)
    return float(m.group(1)) * (1 if m.group(2) else 1000)


def memory_mi(value):
    m = MEMORY.match(str(value))
    if not m:
        raise ValueError("memory quantity %r" % value)
    return float(m.group(1)) * MEMORY_MI[m.group(2)]


def requests(container):
    r = container.get("resources", {}).get("requests", {})
    return cpu_m(r.get("cpu", 0)), memory_mi(r.get("memory", 0))


def pod_requests(spec):
    """A pod's effective request: its containers' sum, or its largest init container if more."""
    cpu = sum(requests(c)[0] for c in spec.get("containers", []))
    mem = sum(requests(c)[1] for c in spec.get("containers", []))
    for init in spec.get("initContainers", []):
        cpu, mem = max(cpu, requests(init)[0]), max(mem, requests(init)[1])
    return cpu, mem


def surge(obj):
    """Pods a Deployment's rollout adds at most (maxSurge; default 25%, rounded up)."""
    if obj["kind"] != "Deployment":
        return 0
    replicas = obj["spec"].get("replicas", 1)
    strategy = obj["spec"].get("strategy", {})
    if strategy.get("type") == "Recreate":
        return 0
    value = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return -(-replicas * int(value[:-1]) // 100)
    return int(value)


def limits_of(objects):
    return {(o["metadata"]["name"], c["name"]): c.get("resources", {}).get("limits", {})
            for o in objects if o["kind"] in ("Deployment", "StatefulSet")
            for c in o["spec"]["template"]["spec"].get("containers", [])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, help="the rendered kind overlay")
    parser.add_argument("--base", required=True, help="the rendered deploy/base")
    args = parser.parse_args()
    report = Report()
    objects = load_manifests(args.kind)
    total_cpu = total_mem = 0.0
    print("  %-28s %5s %9s %11s" % ("pods", "count", "CPU (m)", "memory (Mi)"))
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        name = obj["metadata"]["name"]
        count = obj["spec"].get("replicas", 1) + surge(obj)
        cpu, mem = pod_requests(obj["spec"]["template"]["spec"])
        total_cpu += count * cpu
        total_mem += count * mem
        print("  %-28s %5d %9.0f %11.0f%s" % (name, count, count * cpu, count * mem,
                                               "  (one of them the rollout's surge pod)" if surge(obj) else ""))
    for name, cpu, mem in KIND_OWN:
        total_cpu += cpu
        total_mem += mem
        print("  %-28s %5s %9d %11d" % ("kind: " + name, "", cpu, mem))
    print("  %-28s %5s %9.0f %11.0f   of a node's %d m and %d Mi" % ("total", "", total_cpu, total_mem,
                                                                     NODE_CPU_M, NODE_MEMORY_MI))
    report.check(total_cpu <= NODE_CPU_M, "kind: the pods request %.0f m CPU with kind's own, more than the node's %d m"
                 % (total_cpu, NODE_CPU_M))
    report.check(total_mem <= NODE_MEMORY_MI, "kind: the pods request %.0f Mi with kind's own, more than the node's %d Mi"
                 % (total_mem, NODE_MEMORY_MI))
    base = limits_of(load_manifests(args.base))
    for key, limits in sorted(limits_of(objects).items()):
        report.check(limits == base.get(key), "kind: %s container %s has limits %s, deploy/base %s"
                     % (key[0], key[1], limits, base.get(key)))
    hpas = [o["metadata"]["name"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    report.check(not hpas, "kind: renders HorizontalPodAutoscalers %s, which never scale without a metrics-server" % hpas)
    report.finish("kind fit")


if __name__ == "__main__":
    main()

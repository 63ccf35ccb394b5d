#!/usr/bin/env python3
"""Helpers for bench/run.sh that no Debian tool covers, standard library only:

  ws-echo        one WebSocket round trip per message size, contents checked (smoke mode)
  ws-rtt         round-trip latency of small WebSocket messages, one at a time
  ws-throughput  throughput of large WebSocket messages, echoed one at a time
  ws-idle        opens many WebSockets, checks each echoes, reports the proxy's RSS growth
  held           times a request held by a stopped instance until its first byte arrives
  seed           creates instances through the API, for the routing-scale cases
  report         turns the result lines into the table

The client masks with an all-zero key (allowed by RFC 6455, which only forbids predictable
keys against intermediaries that this benchmark does not have), so payloads are sent without a
per-byte XOR and the client stays cheap next to the proxy it measures.
"""

import argparse
import base64
import json
import os
import secrets
import socket
import ssl
import statistics
import struct
import sys
import time
import urllib.parse

TIMEOUT = 15.0


def connect(url, cafile):
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme in ("https", "wss") else 80)
    sock = socket.create_connection((u.hostname, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if u.scheme in ("https", "wss"):
        ctx = ssl.create_default_context(cafile=cafile)
        # The certificate names localhost; the bench connects by address.
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return sock, f"{u.hostname}:{port}", path


class Reader:
    """Buffered reads on a socket, so headers and frames can be parsed without extra copies."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk

    def until(self, marker):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[: i + len(marker)])
                del self.buf[: i + len(marker)]
                return out
            self.fill()

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class WebSocket:
    def __init__(self, url, cafile=None, cookie=None):
        self.sock, host, path = connect(url, cafile)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        scheme = "https" if url.startswith("wss") else "http"
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {scheme}://{host}",
        ]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.reader = Reader(self.sock)
        head = self.reader.until(b"\r\n\r\n").decode("latin-1")
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            raise ConnectionError(f"upgrade refused: {status}")

    def send(self, payload, opcode=0x2):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + b"\0\0\0\0" + payload)

    def recv(self):
        """The payload of the next data message (continuations joined, control frames skipped)."""
        parts = []
        while True:
            b0, b1 = self.reader.exactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self.reader.exactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self.reader.exactly(8))
            if b1 & 0x80:
                raise ConnectionError("server sent a masked frame")
            data = self.reader.exactly(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("server closed the WebSocket")
            if opcode in (0x9, 0xA):
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cmd_ws_echo(a):
    ws = WebSocket(a.url, a.cafile, a.cookie)
    for size in (5, 200, 70000, 1 << 20):
        msg = secrets.token_bytes(size)
        ws.send(msg)
        if ws.recv() != msg:
            sys.exit(f"{a.url}: echo of {size} bytes differs")
    ws.close()
    print("ok")


def cmd_ws_rtt(a):
    ws = WebSocket(a.url, a.cafile, a.cookie)
    msg = b"x" * 32
    for _ in range(200):
        ws.send(msg)
        ws.recv()
    samples = []
    end = time.monotonic() + a.duration
    while time.monotonic() < end:
        t0 = time.perf_counter_ns()
        ws.send(msg)
        ws.recv()
        samples.append(time.perf_counter_ns() - t0)
    ws.close()
    samples.sort()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1000
    print(f"n={len(samples)} p50_us={p(0.50):.1f} p99_us={p(0.99):.1f}")


def cmd_ws_throughput(a):
    ws = WebSocket(a.url, a.cafile, a.cookie)
    msg = b"x" * a.size
    ws.send(msg)
    ws.recv()
    n = 0
    t0 = time.monotonic()
    end = t0 + a.duration
    # One message in flight: the echo server reads a whole message before answering, so this
    # cannot deadlock on full socket buffers, and 1 MiB messages keep every buffer busy.
    while time.monotonic() < end:
        ws.send(msg)
        if len(ws.recv()) != a.size:
            sys.exit("short echo")
        n += 1
    dt = time.monotonic() - t0
    ws.close()
    print(f"n={n} mbps={n * a.size / dt / 1e6:.1f}")


def cmd_ws_idle(a):
    before = rss_kib(a.pid)
    socks = []
    deadline = time.monotonic() + a.max_seconds
    try:
        for _ in range(a.n):
            if time.monotonic() > deadline:
                break
            socks.append(WebSocket(a.url, a.cafile, a.cookie))
        # Every tunnel must be live, not just accepted.
        for ws in socks:
            ws.send(b"ping")
            if ws.recv() != b"ping":
                sys.exit("idle WebSocket did not echo")
        time.sleep(1.0)
        after = rss_kib(a.pid)
    finally:
        for ws in socks:
            ws.close()
    per = (after - before) * 1024 / max(1, len(socks))
    print(f"n={len(socks)} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={per:.0f}")


def cmd_held(a):
    """Sends a request that the proxy holds while the instance starts; prints the wall-clock
    time its first response byte arrived (the same clock as strace -ttt)."""
    sock, host, path = connect(a.url, a.cafile)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {a.cookie}\r\nAccept: */*\r\n\r\n"
    sent = time.time()
    sock.sendall(req.encode())
    first = sock.recv(1)
    got = time.time()
    if not first:
        sys.exit("no response")
    rest = Reader(sock)
    rest.buf += first
    head = rest.until(b"\r\n\r\n").decode("latin-1")
    sock.close()
    if " 200 " not in head.split("\r\n", 1)[0] + " ":
        sys.exit(f"held request failed: {head.splitlines()[0]}")
    print(f"sent={sent:.6f} first_byte={got:.6f}")


def cmd_seed(a):
    """Creates n instances, one user each, through the API: what the server stores is then
    exactly what it stores for any client, in its own format."""
    import http.client
    import threading

    with open(a.token_file) as f:
        token = f.read().strip()
    u = urllib.parse.urlsplit(a.url)
    ctx = ssl.create_default_context(cafile=a.cafile)
    ctx.check_hostname = False
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    failures = []
    t0 = time.monotonic()

    def worker(k):
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
        for i in range(k, a.n, a.concurrency):
            body = json.dumps({"user_id": f"{a.prefix}{i}"})
            conn.request("POST", "/api/instances", body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            if resp.status != 201:
                failures.append(f"{resp.status} {text[:200]!r}")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"creating instances failed: {failures[0]}")
    print(f"created={a.n} seconds={time.monotonic() - t0:.1f}")


# ---- report ---------------------------------------------------------------------------------

TARGETS = ["direct", "vod", "nginx", "haproxy", "caddy", "chp", "pingora"]
NAMES = {
    "direct": "direct",
    "vod": "vscode-on-demand",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "caddy": "caddy",
    "chp": "config-http-proxy",
    "pingora": "pingora",
}


def load(path):
    """Result lines `case target metric value`, several per key when a case ran several times."""
    res = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            case, target, metric, value = parts
            res.setdefault((case, target, metric), []).append(float(value))
    med = {k: statistics.median(v) for k, v in res.items()}
    # What one proxy core would sustain if the load generator kept up: the capacity figure
    # that stays comparable when the shared load core, not the proxy, is the bottleneck.
    for (case, target, metric), v in list(med.items()):
        if metric == "cpu_us" and v > 0:
            med[(case, target, "core_rps")] = 1e6 / v
            if case == "c2":
                med[(case, target, "core_mbps")] = 65536 / v
            if case == "c4":
                med[(case, target, "core_mbps")] = (1 << 20) / v
    return med


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "k":
        return f"{v / 1000:.1f}k"
    if unit == "us":
        return f"{v:.0f} µs" if v >= 10 else f"{v:.1f} µs"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "MB/s":
        return f"{v:.0f} MB/s"
    if unit == "KiB":
        return f"{v / 1024:.1f} KiB"
    return f"{v:.0f}"


ROWS = [
    # case, metric, label, unit, higher is better
    ("c1", "rps", "1 small, 64 conns: req/s", "k", True),
    ("c1", "cpu_us", "1   proxy CPU per request", "us", False),
    ("c1", "core_rps", "1   req/s per proxy core", "k", True),
    ("c1", "p50_us", "1   p50 latency (64 conns)", "us", False),
    ("c1", "p99_us", "1   p99 latency (64 conns)", "us", False),
    ("c1lat", "p50_us", "1 one conn: p50", "us", False),
    ("c1lat", "p99_us", "1 one conn: p99", "us", False),
    ("c1lat", "add50_us", "1   added over direct, p50", "us", False),
    ("c1lat", "add99_us", "1   added over direct, p99", "us", False),
    ("c1mc", "rps", "1mc two cores for all: req/s", "k", True),
    ("c1mc", "cpu_us", "1mc proxy CPU per request", "us", False),
    ("c2", "mbps", "2 64 KiB, 64 conns: MB/s", "MB/s", True),
    ("c2", "cpu_us", "2   proxy CPU per request", "us", False),
    ("c2", "core_mbps", "2   MB/s per proxy core", "MB/s", True),
    ("c3", "rps", "3 new TLS conn + 1 req: /s", "k", True),
    ("c3", "cpu_us", "3   proxy CPU per connection", "us", False),
    ("c3", "core_rps", "3   handshakes/s per proxy core", "k", True),
    ("c3h", "rps", "3h own host per instance: conn/s", "k", True),
    ("c3h", "cpu_us", "3h  proxy CPU per connection", "us", False),
    ("c3h", "core_rps", "3h  handshakes/s per proxy core", "k", True),
    ("c4", "rtt50_us", "4 WS 32 B round trip p50", "us", False),
    ("c4", "rtt99_us", "4 WS 32 B round trip p99", "us", False),
    ("c4", "mbps", "4 WS 1 MiB echo: MB/s each way", "MB/s", True),
    ("c4", "cpu_us", "4   proxy CPU per MiB echoed", "us", False),
    ("c4", "core_mbps", "4   MB/s each way per proxy core", "MB/s", True),
    ("c6", "bytes_per_conn", "6 memory per idle WebSocket", "KiB", False),
    ("c8", "rps", "8 Unix-socket upstream: req/s", "k", True),
    ("c8", "cpu_us", "8   proxy CPU per request", "us", False),
    ("c8", "core_rps", "8   req/s per proxy core", "k", True),
    ("c8", "p50_us", "8   p50 latency (64 conns)", "us", False),
]


def cmd_report(a):
    r = load(a.results)
    get = lambda c, t, m: r.get((c, t, m))
    lines = []
    out = lines.append
    head = f"{'case / metric':34}" + "".join(f"{NAMES[t]:>18}" for t in TARGETS)
    head += f"{'vod/nginx':>11}{'vod/best(ng,ha)':>17}{'vod/pingora':>13}{'vod/chp':>9}"
    out(head)
    out("-" * len(head))
    for case, metric, label, unit, higher in ROWS:
        vals = {t: get(case, t, metric) for t in TARGETS}
        if all(v is None for v in vals.values()):
            continue
        row = f"{label:34}" + "".join(f"{fmt(vals[t], unit):>18}" for t in TARGETS)

        def ratio(other):
            v, o = vals["vod"], other
            if v is None or o is None or v == 0 or o == 0:
                return "-"
            return f"{(v / o) if higher else (o / v):.2f}x"

        best = [vals[t] for t in ("nginx", "haproxy") if vals[t] is not None]
        best = (max(best) if higher else min(best)) if best else None
        row += f"{ratio(vals['nginx']):>11}{ratio(best):>17}{ratio(vals['pingora']):>13}{ratio(vals['chp']):>9}"
        out(row)
    out("")
    out("ratios: > 1.00x means vscode-on-demand is better (more throughput, or less latency, CPU, memory)")
    out("")
    # Routing scale and wake overhead concern vscode-on-demand alone.
    scale = [(n, get("c5", f"vod{n}", "rps"), get("c5", f"vod{n}", "cpu_us"), get("c5", f"vod{n}", "rss_kib"))
             for n in (10, 10000, 100000)]
    if any(s[1] for s in scale):
        out("5 routing scale (vscode-on-demand, case 1 load)")
        base = scale[0]
        for n, rps, cpu, rss in scale:
            if rps is None:
                continue
            rel = f"{rps / base[1]:.3f} of 10" if base[1] else "-"
            out(f"  {n:>7} instances: {fmt(rps, 'k'):>8} req/s ({rel}), {fmt(cpu, 'us')} CPU/req, RSS {rss / 1024:.1f} MiB")
        if scale[0][3] and scale[2][3]:
            per = (scale[2][3] - scale[0][3]) * 1024 / (100000 - 10)
            out(f"  memory per registered instance: {per:.0f} bytes")
        out("")
    ir10, ir100k = get("ir", "vod10", "per_req"), get("ir", "vod100000", "per_req")
    irng = get("ir", "nginx", "per_req")
    if ir10:
        out("instructions per proxied request (callgrind, case 1 request, user space only)")
        scaled = f"{ir100k:,.0f} ({ir100k / ir10:.3f} of 10)" if ir100k else "not counted"
        out(f"  vscode-on-demand, 10 instances: {ir10:,.0f}; 100 000 instances: {scaled}")
        if irng:
            out(f"  nginx: {irng:,.0f} (vod/nginx {irng / ir10:.2f}x)")
        out("")
    wake = get("c7", "vod", "wake_ms")
    if wake is not None:
        out("7 wake overhead (instance listening -> first proxied byte of the held request)")
        out(f"  median {wake:.2f} ms, max {get('c7', 'vod', 'wake_max_ms'):.2f} ms over {int(get('c7', 'vod', 'runs'))} wakes")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("ws-echo", "ws-rtt", "ws-throughput", "ws-idle", "held"):
        s = sub.add_parser(name)
        s.add_argument("url")
        s.add_argument("--cafile")
        s.add_argument("--cookie")
        s.add_argument("--duration", type=float, default=5.0)
        s.add_argument("--size", type=int, default=1 << 20)
        s.add_argument("--n", type=int, default=10000)
        s.add_argument("--pid", type=int)
        s.add_argument("--max-seconds", type=float, default=120.0)
    s = sub.add_parser("seed")
    s.add_argument("url")
    s.add_argument("n", type=int)
    s.add_argument("--cafile", required=True)
    s.add_argument("--token-file", required=True)
    s.add_argument("--prefix", default="scale")
    s.add_argument("--concurrency", type=int, default=8)
    s = sub.add_parser("report")
    s.add_argument("results")
    a = p.parse_args()
    {
        "ws-echo": cmd_ws_echo,
        "ws-rtt": cmd_ws_rtt,
        "ws-throughput": cmd_ws_throughput,
        "ws-idle": cmd_ws_idle,
        "held": cmd_held,
        "seed": cmd_seed,
        "report": cmd_report,
    }[a.cmd](a)


if __name__ == "__main__":
    main()

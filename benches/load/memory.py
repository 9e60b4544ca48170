#!/usr/bin/env python3
"""Memory benchmark: keygate's RSS with 1,000,000 keys in the SQLite store
and 100,000 distinct keys hot in the cache, bytes per cached key, and RSS
over a soak.

    python3 benches/load/memory.py [--keys 1000000] [--hot 100000] [--soak 60]

Keys are written straight into the store file (the same schema and SHA-256
hashes as `keygate keys import`, far faster than a million CLI calls). The
upstream is an nginx returning a small JSON body. During the soak wrk sends
requests with hot keys (a Lua script cycles through them) and RSS is sampled
every few seconds. Writes benches/load/memory.md.
"""
import argparse, hashlib, os, sqlite3, subprocess, sys, tempfile, threading, time
import http.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Proc, free_port, keygate_conf, ensure_tools, keygate_binary, start_upstream, publish, stop_all  # noqa: E402


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def token(i):
    return f"benchkey.{i:010d}-memory-test"


# The columns written; every later column takes its default, so a column
# added to the schema does not break the fill.
KEY_COLUMNS = ("key_id, name, description, owner, role, permissions, plan, rate_limit, allowed_ips, env, enabled, expires_at, "
               "created_at, last_used, usage_count, metadata, key_prefix")
INSERT_KEYS = f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({', '.join('?' * len(KEY_COLUMNS.split(', ')))})"


def fill_store(db, n):
    conn = sqlite3.connect(db)
    now = int(time.time())
    conn.execute("BEGIN")
    batch_keys, batch_secrets = [], []
    for i in range(n):
        key_id = f"key_bench{i:011d}"
        batch_keys.append((key_id, f"bench key {i}", "", "bench", "reader", "[]", None, None, "[]", "live", 1, None, now, None, 0, "{}", "benchkey.****"))
        batch_secrets.append((hashlib.sha256(token(i).encode()).digest(), key_id))
        if len(batch_keys) == 50_000:
            conn.executemany(INSERT_KEYS, batch_keys)
            conn.executemany("INSERT INTO secrets (token_hash, key_id, expires_at) VALUES (?, ?, NULL)", batch_secrets)
            batch_keys, batch_secrets = [], []
    if batch_keys:
        conn.executemany(INSERT_KEYS, batch_keys)
        conn.executemany("INSERT INTO secrets (token_hash, key_id, expires_at) VALUES (?, ?, NULL)", batch_secrets)
    conn.commit()
    conn.close()


def warm(port, hot, threads=8):
    failures = []

    def worker(start):
        c = http.client.HTTPConnection("127.0.0.1", port)
        for i in range(start, hot, threads):
            c.request("GET", "/api/lists", headers={"Authorization": f"Bearer {token(i)}"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                failures.append(r.status)
        c.close()

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--hot", type=int, default=100_000)
    ap.add_argument("--soak", type=int, default=60, help="seconds of load after warm-up (600 for the 10-minute soak)")
    ap.add_argument("--keygate", help="a keygate binary to measure instead of building target/release/keygate")
    args = ap.parse_args()
    ensure_tools()
    keygate = keygate_binary(args.keygate)
    work = tempfile.mkdtemp(prefix="keygate-mem-")
    procs = []
    try:
        up, _, upstream = start_upstream(work, 1)
        procs.append(upstream)
        port, admin = free_port(), free_port()
        conf = keygate_conf(work, "mem", port, admin, f'url = "http://127.0.0.1:{up}"')
        subprocess.run([keygate, "--config", str(conf), "keys", "list"], check=True, capture_output=True)
        started = time.time()
        fill_store(str(conf.parent / "keygate.db"), args.keys)
        print(f"stored {args.keys} keys in {time.time() - started:.1f}s", file=sys.stderr)
        env = dict(os.environ, KEYGATE_LOG="error")
        gw = Proc([keygate, "--config", str(conf), "serve"], port, env=env)
        procs.append(gw)
        warm(port, 100)  # pools, first allocations
        time.sleep(1)
        base = rss_kib(gw.p.pid)
        started = time.time()
        failures = warm(port, args.hot)
        took = time.time() - started
        time.sleep(1)
        hot_rss = rss_kib(gw.p.pid)
        per_key = (hot_rss - base) * 1024 / args.hot
        print(f"warmed {args.hot} keys in {took:.1f}s ({len(failures)} failures); RSS {base} -> {hot_rss} KiB", file=sys.stderr)
        lua = Path(work) / "hot.lua"
        lua.write_text(f'local i = 0\nrequest = function()\n  i = (i + 7919) % {args.hot}\n'
                       f'  return wrk.format("GET", "/api/lists", {{ ["Authorization"] = string.format("Bearer benchkey.%010d-memory-test", i) }})\nend\n')
        samples = []
        load = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{args.soak}s", "-s", str(lua), f"http://127.0.0.1:{port}/api/lists"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        start = time.time()
        while load.poll() is None:
            time.sleep(min(10, max(1, args.soak / 12)))
            samples.append((round(time.time() - start), rss_kib(gw.p.pid)))
        out = load.stdout.read()
        lines = [
            f"Store: {args.keys} keys (SQLite). Hot: {args.hot} distinct keys resolved once each, then a {args.soak}s soak with wrk cycling through them.",
            "",
            "| measure | value |",
            "| --- | ---: |",
            f"| RSS after start and 100 requests | {base / 1024:.1f} MiB |",
            f"| RSS with {args.hot} keys cached | {hot_rss / 1024:.1f} MiB |",
            f"| bytes per cached key | {per_key:.0f} |",
            f"| warm-up failures | {len(failures)} |",
            f"| RSS during the soak (s: MiB) | {', '.join(f'{t}: {r / 1024:.1f}' for t, r in samples)} |",
            f"| RSS growth from first to last soak sample | {(samples[-1][1] - samples[0][1]) / 1024:.1f} MiB |" if samples else "",
            "",
            "wrk during the soak: " + " ".join(l.strip() for l in out.splitlines() if "Requests/sec" in l or "requests in" in l),
        ]
        publish("\n".join(lines), "memory.md")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()

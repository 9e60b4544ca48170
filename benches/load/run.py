#!/usr/bin/env python3
"""Load benchmark: keygate against the upstream direct and against nginx doing
the same job, side by side in one run, on loopback.

    python3 benches/load/run.py [--rounds 3] [--duration 10] [--connections 64]

Configurations (all in front of the same upstream, an nginx returning a small
JSON body):
  direct        the upstream itself
  nginx         nginx as the gateway: a map of keys, an IP allow rule, a
                per-key limit_req, credential stripping, identity headers,
                keep-alive upstream (its config is generated below)
  keygate       SQLite store, local limiter, every check on, cached key
  keygate-redis Redis store and Redis limiter (a redis-server of its own)
  keygate-tls   keygate over TLS (HTTP/1.1), SQLite, local limiter
  keygate-https-upstream
                keygate (SQLite, local limiter) forwarding over TLS to the
                same upstream's HTTPS port (a private CA, verified)
  keygate-quotas
                keygate (SQLite, local limiter) with the key on a plan of
                three windows (minute, day and month quotas, none reached):
                what quotas cost beside keygate's one window

Throughput: wrk, closed loop, limits set effectively infinite, every non-2xx
counted. Rounds are interleaved, each starting one configuration later
(A B C, B C A, C A B, ...), and each figure is the median of the rounds. CPU per request: utime+stime of the gateway's
processes from /proc, divided by the requests served. Latency: oha, open
loop with latency correction (no coordinated omission), at 50% of the
slowest configuration's median throughput, the same rate for every one;
with --light-latency also at 10% of it (a second table: the hop's own cost
once queueing for the cores no longer dominates).
Gateways get the same number of workers (nginx worker_processes = keygate's
tokio worker threads).

With --pin, every process is pinned with taskset the way a gateway is
deployed: the gateways (nginx and keygate alike) on cores of their own, the
load generator, the upstream and Redis on the others (on two cores: one
each, one gateway worker). Without it, all share every core, and a gateway's
figures include waiting for cores that the load generator holds.

Installs nginx and wrk from Debian's packages and oha with cargo when missing.
Writes benches/load/results.md (results-pinned.md with --pin).
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "target" / "bench-tools"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# --light-latency's rate, as a share of the slowest gateway's throughput.
LIGHT_SHARE = 0.1
# keygate-tls's certificate key, by --tls-key: ECDSA P-256 is what ACME
# clients such as certbot issue by default; RSA-2048 costs each handshake
# about ten times the CPU, which shows as a burst when oha connects.
TLS_KEYS = {"ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], "rsa": ["-newkey", "rsa:2048"]}


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def ensure_tools(need_oha=True):
    missing = [p for p in ("nginx", "wrk") if not shutil.which(p) and not Path(f"/usr/sbin/{p}").exists()]
    if missing:
        print(f"installing {missing} from Debian's packages", file=sys.stderr)
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, capture_output=True)
    oha = shutil.which("oha") or (TOOLS / "bin" / "oha")
    if not need_oha:
        return None
    if not Path(oha).exists():
        print("installing oha with cargo (once)", file=sys.stderr)
        subprocess.run(["cargo", "install", "--locked", "--root", str(TOOLS), "oha"], check=True)
    return str(oha)


def keygate_binary(given=None):
    """The keygate to measure: `given`, or a fresh release build."""
    if given:
        return given
    print("building keygate (release)", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "keygate"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "release" / "keygate")


def start_upstream(work, workers, prefix=()):
    """The upstream every configuration forwards to: an nginx returning a small
    JSON body, over plain HTTP and (for keygate-https-upstream) over TLS with
    a certificate from a private CA (`ca.pem` in `work`)."""
    port, tls_port = free_port(), free_port()
    upstream_ca(work)
    body = upstream_body(port) + upstream_tls_body(tls_port, work)
    return port, tls_port, Proc([*prefix, nginx_bin(), "-c", str(nginx_conf(work, port, body, workers)), "-g", "daemon off;"], port)


def upstream_ca(work):
    """A CA and a `localhost` certificate it signed, as an HTTPS backend has."""
    w = Path(work)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", f"{w}/ca.key", "-out", f"{w}/ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    sh("openssl", "req", *ec, "-keyout", f"{w}/up.key", "-out", f"{w}/up.csr", "-subj", "/CN=localhost")
    (w / "up.ext").write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", f"{w}/up.csr", "-CA", f"{w}/ca.pem", "-CAkey", f"{w}/ca.key", "-CAcreateserial",
       "-out", f"{w}/up.pem", "-days", "2", "-extfile", f"{w}/up.ext")


def publish(table, filename):
    """Prints a result table and writes it next to this script."""
    print(table)
    (ROOT / "benches" / "load" / filename).write_text(table + "\n")


def stop_all(procs, work):
    """Stops every started process, newest first, and removes the work folder."""
    for p in reversed(procs):
        p.stop()
    shutil.rmtree(work, ignore_errors=True)


def nginx_bin():
    return shutil.which("nginx") or "/usr/sbin/nginx"


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, IndexError):
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


class Proc:
    def __init__(self, cmd, port, env=None, cwd=None, include_children=False):
        self.log = tempfile.NamedTemporaryFile(prefix="keygate-load-", suffix=".log", delete=False)
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        self.include_children = include_children
        try:
            wait_port(port)
        except SystemExit:
            self.stop()
            raise SystemExit(f"{' '.join(map(str, cmd))} did not start:\n{Path(self.log.name).read_text()}")

    def pids(self):
        return [self.p.pid] + (children(self.p.pid) if self.include_children else [])

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)


def nginx_conf(work, listen, body, workers):
    conf = f"""
worker_processes {workers};
pid {work}/nginx-{listen}.pid;
error_log {work}/nginx-{listen}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/cb-{listen};
  proxy_temp_path {work}/pt-{listen};
  fastcgi_temp_path {work}/ft-{listen};
  uwsgi_temp_path {work}/ut-{listen};
  scgi_temp_path {work}/st-{listen};
  keepalive_requests 1000000;
  {body}
}}
"""
    path = Path(work) / f"nginx-{listen}.conf"
    path.write_text(conf)
    return path


def upstream_body(port):
    return f"""server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{{"success":true,"data":[1,2,3]}}'; }} }}"""


def upstream_tls_body(port, work):
    return f"""server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {work}/up.pem; ssl_certificate_key {work}/up.key;
  location / {{ default_type application/json; return 200 '{{"success":true,"data":[1,2,3]}}'; }} }}"""


def gateway_nginx_body(port, upstream_port, token):
    # The same job as keygate: find the key, refuse unknown ones, check the
    # client IP, limit per key, strip the credential, add identity headers.
    return f"""
  map_hash_bucket_size 128;
  map $http_authorization $key_id {{ "Bearer {token}" "key_bench"; default ""; }}
  limit_req_zone $key_id zone=perkey:10m rate=100000000r/s;
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location /api/ {{
      allow 127.0.0.0/8; deny all;
      if ($key_id = "") {{ return 401 '{{"success":false,"error":"the API key is not valid","code":"invalid_key"}}'; }}
      limit_req zone=perkey burst=100000000 nodelay;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_set_header X-Keygate-Key-Id $key_id;
      proxy_set_header X-Keygate-Env live;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_pass http://backend;
    }}
  }}
"""


# keygate-quotas's plan: a day and a month quota beside the minute limit,
# all far beyond what a run sends.
QUOTA_PLAN = "[plans.metered]\nper_minute = 1000000000\nper_day = 2000000000\nper_month = 4000000000\n"


# keygate-guarded's guards: the failed-credential guard (never reached by
# the bench's good key), a deny list the bench's address is not on, and an
# in-flight limit above the connections any run opens.
GUARDED = """
[abuse]
failed_credentials = { per_minute = 30, block_for = "15m" }
"""
GUARDED_DENY = 'deny = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]'
GUARDED_IN_FLIGHT = "max_in_flight = 100000"


def keygate_conf(work, name, port, admin, upstream, extra_server="", store='[store]\npath = "keygate.db"', rate="backend = \"local\""):
    text = f"""
[server]
listen = "127.0.0.1:{port}"
{extra_server}
{GUARDED_DENY if name.startswith("keygate-guarded") else ""}
[admin]
listen = "127.0.0.1:{admin}"
{store}
[rate_limit]
default_per_minute = 1000000000
{rate}
{GUARDED_IN_FLIGHT if name.startswith("keygate-guarded") else ""}
[[upstreams]]
name = "backend"
{upstream}
[[modules]]
id = "lists"
name = "List Management"
permissions = [ {{ id = "lists.view", label = "View List" }} ]
[[routes]]
match = "GET /api/lists"
permission = "lists.view"
[[roles]]
id = "reader"
permissions = ["lists.view"]
{QUOTA_PLAN if name.startswith("keygate-quotas") else ""}
{GUARDED if name.startswith("keygate-guarded") else ""}
"""
    d = Path(work) / name
    d.mkdir(exist_ok=True)
    (d / "gateway.toml").write_text(text)
    return d / "gateway.toml"


class Placement:
    """Which cores each side runs on: `gateway` and `load` are command
    prefixes (empty when not pinned), with the worker/thread counts that fit."""

    def __init__(self, pin, workers):
        cores = sorted(os.sched_getaffinity(0))
        if pin and len(cores) < 2:
            raise SystemExit("--pin needs at least two cores")
        if pin:
            half = len(cores) // 2
            load, gateway = cores[:len(cores) - half], cores[len(cores) - half:]
            self.gateway = ["taskset", "-c", ",".join(map(str, gateway))]
            self.load = ["taskset", "-c", ",".join(map(str, load))]
            self.workers, self.load_threads = len(gateway), len(load)
            self.text = f"pinned: gateways on cores {','.join(map(str, gateway))}, load generator, upstream and Redis on {','.join(map(str, load))}"
        else:
            self.gateway, self.load = [], []
            self.workers = self.load_threads = workers
            self.text = "not pinned: every process shares every core"


def wrk(url, token, duration, conns, threads, prefix=()):
    out = sh(*prefix, "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-H", f"Authorization: Bearer {token}", url).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = int(bad.group(1)) if bad else 0
    if errors:
        non2xx += sum(int(g) for g in errors.groups())
    return rps, total, non2xx


def oha(oha_bin, url, token, rate, duration, conns, prefix=()):
    out = sh(*prefix, oha_bin, "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-c", str(conns), "-q", str(rate), "--latency-correction",
             "--insecure", "-H", f"Authorization: Bearer {token}", url).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    status = data.get("statusCodeDistribution", {})
    non2xx = sum(v for k, v in status.items() if not k.startswith("2")) + sum(data.get("errorDistribution", {}).values())
    return pct["p50"] * 1000, pct["p99"] * 1000, pct["p99.9"] * 1000, non2xx


def paired_ratios(results, lat):
    """Each keygate configuration against nginx round by round: the
    machine's speed drifts over a run (by a third on a shared machine), and a
    ratio taken within one round cancels most of that drift. The p99 at the
    fixed rate moves by 2x between rounds, so its rounds are given too."""
    out = []
    for name, r in results.items():
        if not name.startswith("keygate") or not r["rps"]:
            continue
        rps = [a / b for a, b in zip(r["rps"], results["nginx"]["rps"])]
        cpu = [a / b for a, b in zip(r["cpu"], results["nginx"]["cpu"])]
        line = (f"- {name} / nginx, round by round: throughput {', '.join(f'{x:.2f}' for x in rps)} "
                f"(median {statistics.median(rps):.2f}); CPU per request {', '.join(f'{x:.2f}' for x in cpu)} "
                f"(median {statistics.median(cpu):.2f})")
        if name in lat and "nginx" in lat:
            pairs = [(a[1], b[1]) for a, b in zip(lat[name], lat["nginx"])]
            below = sum(a <= b for a, b in pairs)
            line += (f"; p99 at the fixed rate {', '.join(f'{a:.2f}/{b:.2f}' for a, b in pairs)} ms "
                     f"(at or below nginx's in {below} of {len(pairs)})")
        out.append(line)
    return out


def rotated(configs, r):
    """Round r's order: each round starts one configuration later (A B C,
    B C A, C A B), so none always runs right after the same neighbour."""
    items = list(configs.items())
    k = r % len(items)
    return items[k:] + items[:k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is their median")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=64, help="client connections (wrk and oha)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gateway workers when not pinned")
    ap.add_argument("--pin", action="store_true", help="gateways on cores of their own, the rest on the others (see above)")
    ap.add_argument("--skip-latency", action="store_true", help="throughput only")
    ap.add_argument("--tls-key", choices=sorted(TLS_KEYS), default="ec", help="keygate-tls's certificate key (default: ECDSA P-256)")
    ap.add_argument("--light-latency", action="store_true",
                    help=f"also measure latency at {LIGHT_SHARE * 100:.0f}%% of the slowest gateway's throughput (adds a table)")
    ap.add_argument("--keygate", help="a keygate binary to measure instead of building target/release/keygate")
    ap.add_argument("--baseline", help="another keygate binary (say, main before a change), measured as keygate-baseline "
                    "(SQLite, local limiter) in the same interleaved rounds, and the change's ratio to it given round by round")
    ap.add_argument("--only", help="comma-separated configurations to measure (nginx is always kept: ratios are to it)")
    args = ap.parse_args()
    place = Placement(args.pin, args.workers)
    # oha only measures latency: a throughput-only run does not wait for its build.
    oha_bin = ensure_tools(need_oha=not args.skip_latency)
    keygate = keygate_binary(args.keygate)
    work = tempfile.mkdtemp(prefix="keygate-load-")
    procs = []
    try:
        up_port, up_tls_port, upstream = start_upstream(work, place.load_threads, place.load)
        procs.append(upstream)
        redis_port = free_port()
        procs.append(Proc([*place.load, "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], redis_port))
        sh("openssl", "req", "-x509", *TLS_KEYS[args.tls_key], "-nodes", "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem",
           "-days", "2", "-subj", "/CN=localhost")
        env = dict(os.environ, KEYGATE_LOG="warn", TOKIO_WORKER_THREADS=str(place.workers))
        configs = {}
        token = None
        specs = [
            ("keygate", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-redis", keygate, "", f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"', 'backend = "redis"'),
            ("keygate-tls", keygate, f'tls = {{ cert = "{work}/cert.pem", key = "{work}/key.pem" }}', '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-https-upstream", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-quotas", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-guarded", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
        ]
        plain = f'url = "http://127.0.0.1:{up_port}"'
        upstreams = {"keygate-https-upstream": f'url = "https://127.0.0.1:{up_tls_port}"\nserver_name = "localhost"\nca_file = "{work}/ca.pem"'}
        if args.baseline:
            specs.insert(1, ("keygate-baseline", args.baseline, "", '[store]\npath = "keygate.db"', 'backend = "local"'))
        for name, binary, extra, store, rate in specs:
            port, admin = free_port(), free_port()
            conf = keygate_conf(work, name, port, admin, upstreams.get(name, plain), extra, store, rate)
            if token is None:
                token = json.loads(sh(binary, "--config", str(conf), "keys", "create", "--name", "bench", "--role", "reader", "--json").stdout)["data"]["apiKey"]
            else:
                plan = ["--plan", "metered"] if name == "keygate-quotas" else []
                sh(binary, "--config", str(conf), "keys", "import", "--token", token, "--name", "bench", "--role", "reader", *plan)
            procs.append(Proc([*place.gateway, binary, "--config", str(conf), "serve"], port, env=env))
            scheme = "https" if name == "keygate-tls" else "http"
            configs[name] = (f"{scheme}://127.0.0.1:{port}/api/lists", procs[-1])
        ng_port = free_port()
        ng_conf = nginx_conf(work, ng_port, gateway_nginx_body(ng_port, up_port, token), place.workers)
        ng = Proc([*place.gateway, nginx_bin(), "-c", str(ng_conf), "-g", "daemon off;"], ng_port, include_children=True)
        procs.append(ng)
        configs = {"direct": (f"http://127.0.0.1:{up_port}/api/lists", None), "nginx": (f"http://127.0.0.1:{ng_port}/api/lists", ng), **configs}
        if args.only:
            keep = set(args.only.split(",")) | {"nginx"}
            configs = {n: c for n, c in configs.items() if n in keep}

        # Warm up every configuration (caches, pools, TLS sessions).
        for url, _ in configs.values():
            wrk(url, token, 2, args.connections, place.load_threads, place.load)

        results = {name: {"rps": [], "cpu": [], "non2xx": 0} for name in configs}
        for r in range(args.rounds):
            for name, (url, proc) in rotated(configs, r):
                before = cpu_ticks(proc.pids()) if proc else 0
                rps, total, non2xx = wrk(url, token, args.duration, args.connections, place.load_threads, place.load)
                after = cpu_ticks(proc.pids()) if proc else 0
                results[name]["rps"].append(rps)
                results[name]["non2xx"] += non2xx
                if proc and total:
                    results[name]["cpu"].append((after - before) / CLK_TCK * 1e6 / total)
                print(f"round {r + 1} {name}: {rps:.0f} req/s, {non2xx} non-2xx", file=sys.stderr)

        med = {n: statistics.median(v["rps"]) for n, v in results.items()}
        gateways = [n for n in configs if n != "direct"]
        slowest = min(med[n] for n in gateways)
        rate, light_rate = int(slowest * 0.5), int(slowest * LIGHT_SHARE)

        def latency_rounds(at, label):
            """Every configuration's open-loop percentiles at `at` req/s, round by round."""
            out = {}
            for r in range(args.rounds):
                for name, (url, _) in rotated(configs, r):
                    p = oha(oha_bin, url, token, at, args.duration, args.connections, place.load)
                    out.setdefault(name, []).append(p)
                    print(f"{label} round {r + 1} {name}: p50 {p[0]:.3f} ms p99 {p[1]:.3f} ms", file=sys.stderr)
            return out

        lat = {} if args.skip_latency else latency_rounds(rate, "latency")
        light = latency_rounds(light_rate, "light latency") if args.light_latency and not args.skip_latency else {}

        lines = [
            f"Machine: {os.cpu_count()} cores, {sh('uname', '-sr').stdout.strip()}; {args.rounds} interleaved rounds of {args.duration}s, "
            f"wrk -t{place.load_threads} -c{args.connections}; gateway workers: {place.workers}; {place.text}; "
            f"open-loop rate {rate} req/s (50% of the slowest gateway); keygate-tls certificate key: {args.tls_key}.",
            "",
            "| configuration | throughput (req/s, median) | vs nginx | vs direct | non-2xx | CPU µs/request | p50 ms | p99 ms | p99.9 ms | non-2xx at fixed rate |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in configs:
            cpu = f"{statistics.median(results[name]['cpu']):.1f}" if results[name]["cpu"] else "-"
            if name in lat:
                p50, p99, p999 = (statistics.median(x[i] for x in lat[name]) for i in range(3))
                bad = sum(x[3] for x in lat[name])
                lcols = f"{p50:.3f} | {p99:.3f} | {p999:.3f} | {bad}"
            else:
                lcols = "- | - | - | -"
            vs_direct = f"{med[name] / med['direct']:.2f}" if "direct" in med else "-"
            lines.append(f"| {name} | {med[name]:.0f} | {med[name] / med['nginx']:.2f} | {vs_direct} | {results[name]['non2xx']} | {cpu} | {lcols} |")
        lines += ["", *paired_ratios(results, lat)]
        for a, b in [("keygate", "keygate-baseline"), ("keygate-quotas", "keygate")]:
            if a not in results or b not in results:
                continue
            rps = [x / y for x, y in zip(results[a]["rps"], results[b]["rps"])]
            cpu = [x / y for x, y in zip(results[a]["cpu"], results[b]["cpu"])]
            lines.append(f"- {a} / {b}, round by round: throughput {', '.join(f'{x:.3f}' for x in rps)} "
                         f"(median {statistics.median(rps):.3f}); CPU per request {', '.join(f'{x:.3f}' for x in cpu)} "
                         f"(median {statistics.median(cpu):.3f})")
        if light:
            lines += [
                "",
                f"Light load: the same latency measurement at {light_rate} req/s ({LIGHT_SHARE:.0%} of the slowest gateway), "
                "where queueing for the machine's cores no longer dominates: what the gateway's own hop adds.",
                "",
                "| configuration | p50 ms | p99 ms | p99.9 ms | p50 - direct's | p99 - direct's |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            base = [statistics.median(x[i] for x in light["direct"]) for i in range(3)] if "direct" in light else None
            for name in configs:
                p50, p99, p999 = (statistics.median(x[i] for x in light[name]) for i in range(3))
                delta = f"{p50 - base[0]:+.3f} | {p99 - base[1]:+.3f}" if base else "- | -"
                lines.append(f"| {name} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {delta} |")
        publish("\n".join(lines), "results-pinned.md" if args.pin else "results.md")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()

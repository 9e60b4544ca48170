#!/usr/bin/env python3
"""Load benchmark: keygate against the upstream direct and against nginx and
HAProxy doing the same job, side by side in one run, on loopback.

    python3 benches/load/run.py [--rounds 3] [--duration 10] [--connections 64]
    python3 benches/load/run.py --tls ...   # TLS termination: HTTP/1.1, HTTP/2, handshakes

Configurations (all in front of the same upstream, an nginx returning a small
JSON body):
  direct        the upstream itself
  nginx         nginx as the gateway: a map of keys, an IP allow rule, a
                per-key limit_req, credential stripping, identity headers,
                keep-alive upstream (its config is generated below)
  haproxy       HAProxy doing the same: a map file of keys, an IP rule, a
                per-key request rate in a stick table, the credential
                deleted, identity headers, keep-alive upstream
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

With --tls, keygate-tls, nginx and HAProxy terminate TLS with one certificate
(ECDSA P-256 by default) and are measured four ways in interleaved rounds:
HTTP/1.1 keep-alive (wrk), HTTP/2 (h2load, 10 streams per connection), full
handshakes per second (openssl s_time -new: each connection asks once and
closes) and resumed ones (s_time -reuse: a TLS 1.3 ticket). The handshake
loops run on the load cores and may be what saturates first, so CPU per
handshake is the figure that compares the gateways.

Ratios are given to each peer and, round by round, to the better of the two.
Installs nginx, HAProxy, wrk and h2load (nghttp2-client) from Debian's
packages and oha with cargo when missing. Writes benches/load/results.md
(results-pinned.md with --pin; results-tls*.md with --tls).
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


# Each tool the scripts run, and the Debian package it comes in.
PACKAGES = {"nginx": "nginx", "wrk": "wrk", "haproxy": "haproxy", "h2load": "nghttp2-client"}


def ensure_tools(need_oha=True):
    missing = [pkg for tool, pkg in PACKAGES.items() if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"installing {missing} from Debian's packages", file=sys.stderr)
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, capture_output=True)
        # Debian starts the services it installs: the scripts run their own.
        for tool in ("nginx", "haproxy"):
            subprocess.run(["service", tool, "stop"], capture_output=True)
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


def gateway_nginx_body(port, upstream_port, token, tls=None):
    # The same job as keygate: find the key, refuse unknown ones, check the
    # client IP, limit per key, strip the credential, add identity headers.
    # With `tls` (certificate and key files) it terminates TLS, offering h2,
    # with a session cache and tickets as keygate and HAProxy have.
    listen = f"127.0.0.1:{port}"
    if tls:
        listen += (f" ssl http2; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};"
                   " ssl_session_cache shared:SSL:10m; ssl_session_tickets on")
    return f"""
  map_hash_bucket_size 128;
  map $http_authorization $key_id {{ "Bearer {token}" "key_bench"; default ""; }}
  limit_req_zone $key_id zone=perkey:10m rate=100000000r/s;
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen {listen};
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


def haproxy_conf(work, port, upstream_port, token, threads, tls=None):
    """HAProxy doing keygate's job, as the nginx gateway above: a map of keys
    (unknown: 401), an IP rule, a per-key rate (a stick table), the
    credential stripped, identity headers, keep-alive upstream. With `tls`
    (a PEM holding certificate and key) it terminates TLS, offering h2."""
    w = Path(work)
    (w / "keys.map").write_text(f"{token} key_bench\n")
    bind = f"bind 127.0.0.1:{port}" + (f" ssl crt {tls} alpn h2,http/1.1" if tls else "")
    conf = f"""
global
  nbthread {threads}
  maxconn 8192
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
  option http-keep-alive
  http-reuse always
frontend gateway
  {bind}
  stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)
  http-request deny deny_status 403 unless {{ src 127.0.0.0/8 }}
  http-request set-var(txn.key) req.hdr(authorization),field(2,\' \'),map_str({w}/keys.map) if {{ req.hdr(authorization) -m beg "Bearer " }}
  http-request return status 401 content-type application/json string '{{"success":false,"error":"the API key is not valid","code":"invalid_key"}}' unless {{ var(txn.key) -m found }}
  http-request track-sc0 var(txn.key)
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 100000000 }}
  http-request del-header Authorization
  http-request set-header X-Keygate-Key-Id %[var(txn.key)]
  http-request set-header X-Keygate-Env live
  option forwardfor
  default_backend upstream
backend upstream
  server up 127.0.0.1:{upstream_port}
"""
    path = w / f"haproxy-{port}.cfg"
    path.write_text(conf)
    return path


def haproxy_bin():
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


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


def start_peers(work, place, up_port, token, tls=None):
    """nginx and HAProxy doing keygate's job, on the gateway cores:
    {name: (url, Proc)}. With `tls` (certificate and key files), both
    terminate TLS with that certificate, offering h2."""
    scheme = "https" if tls else "http"
    ng_port, hp_port = free_port(), free_port()
    ng_conf = nginx_conf(work, ng_port, gateway_nginx_body(ng_port, up_port, token, tls), place.workers)
    ng = Proc([*place.gateway, nginx_bin(), "-c", str(ng_conf), "-g", "daemon off;"], ng_port, include_children=True)
    pem = None
    if tls:
        pem = Path(work) / "haproxy.pem"
        pem.write_text(Path(tls[0]).read_text() + Path(tls[1]).read_text())
    hp_conf = haproxy_conf(work, hp_port, up_port, token, place.workers, pem)
    hp = Proc([*place.gateway, haproxy_bin(), "-f", str(hp_conf), "-db"], hp_port)
    return {"nginx": (f"{scheme}://127.0.0.1:{ng_port}/api/lists", ng), "haproxy": (f"{scheme}://127.0.0.1:{hp_port}/api/lists", hp)}


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


PEERS = ("nginx", "haproxy")


def per_round(a, b):
    return [x / y for x, y in zip(a, b)]


def better_peer(results, key):
    """Round by round, the better of nginx's and HAProxy's figure (the
    higher throughput, or with `key` "cpu" the lower CPU per request)."""
    pick = min if key == "cpu" else max
    return [pick(v) for v in zip(*(results[p][key] for p in PEERS if p in results))]


def ratio_line(label, values, digits=2):
    return f"{label} {', '.join(f'{x:.{digits}f}' for x in values)} (median {statistics.median(values):.{digits}f})"


def paired_ratios(results, lat):
    """Each keygate configuration against the peers round by round: the
    machine's speed drifts over a run (by a third on a shared machine), and a
    ratio taken within one round cancels most of that drift. The p99 at the
    fixed rate moves by 2x between rounds, so its rounds are given too."""
    out = []
    best_rps, best_cpu = better_peer(results, "rps"), better_peer(results, "cpu")
    for name, r in results.items():
        if not name.startswith("keygate") or not r["rps"]:
            continue
        line = (f"- {name}: " + ratio_line("throughput / nginx", per_round(r["rps"], results["nginx"]["rps"]))
                + "; " + ratio_line("/ the better peer", per_round(r["rps"], best_rps))
                + "; " + ratio_line("CPU per request / the better peer", per_round(r["cpu"], best_cpu)))
        if name in lat and all(p in lat for p in PEERS):
            best = [min(a[1], b[1]) for a, b in zip(*(lat[p] for p in PEERS))]
            pairs = list(zip((x[1] for x in lat[name]), best))
            below = sum(a <= b for a, b in pairs)
            line += (f"; p99 at the fixed rate {', '.join(f'{a:.2f}/{b:.2f}' for a, b in pairs)} ms "
                     f"(at or below the better peer's in {below} of {len(pairs)})")
        out.append(line)
    return out


def rotated(configs, r):
    """Round r's order: each round starts one configuration later (A B C,
    B C A, C A B), so none always runs right after the same neighbour."""
    items = list(configs.items())
    k = r % len(items)
    return items[k:] + items[:k]


def h2load(url, token, duration, conns, threads, prefix=()):
    """HTTP/2 over TLS: `conns` connections, 10 streams each at once."""
    out = sh(*prefix, "h2load", f"-c{conns}", "-m10", f"-t{min(threads, conns)}", f"-D{duration}",
             "-H", f"Authorization: Bearer {token}", url).stdout
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    return rps, done, done - ok


def handshakes(url, resumed, duration, parallel, prefix=()):
    """TLS handshakes per second: `parallel` openssl s_time loops, each
    connecting, asking one request and closing, again and again; with
    `resumed`, each new connection resumes the session its first one got
    (a TLS 1.3 ticket). Every gateway answers the keyless request alike."""
    host = url.split("//")[1].split("/")[0]
    cmd = [*prefix, "openssl", "s_time", "-connect", host, "-reuse" if resumed else "-new", "-time", str(duration), "-www", "/api/lists"]
    start = time.time()
    running = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(parallel)]
    outs = [p.communicate()[0] for p in running]
    elapsed = time.time() - start
    total = sum(int(re.findall(r"(\d+) connections in [\d.]+ real seconds", o)[-1]) for o in outs)
    return total / elapsed, total, 0


def measure(res, proc, run_it):
    """Runs one measurement (`run_it()`: rate, count, errors) against a
    gateway and records it in `res`: the rate, the errors and, for a
    gateway process, its CPU per request or handshake (utime+stime)."""
    before = cpu_ticks(proc.pids()) if proc else 0
    rate, total, bad = run_it()
    after = cpu_ticks(proc.pids()) if proc else 0
    res["rps"].append(rate)
    res["non2xx"] += bad
    if proc and total:
        res["cpu"].append((after - before) / CLK_TCK * 1e6 / total)
    return rate, bad


def tls_rounds(args, place, configs, token):
    """The TLS mode: every measure over every gateway, interleaved."""
    conns, threads = args.connections, place.load_threads
    measures = {
        "HTTP/1.1 over TLS (wrk)": lambda url: wrk(url, token, args.duration, conns, threads, place.load),
        "HTTP/2 (h2load -m 10)": lambda url: h2load(url, token, args.duration, conns, threads, place.load),
        "full handshakes": lambda url: handshakes(url, False, args.duration, 4 * threads, place.load),
        "resumed handshakes": lambda url: handshakes(url, True, args.duration, 4 * threads, place.load),
    }
    for url, _ in configs.values():
        wrk(url, token, 2, conns, threads, place.load)
        h2load(url, token, 2, conns, threads, place.load)
    results = {m: {n: {"rps": [], "cpu": [], "non2xx": 0} for n in configs} for m in measures}
    for r in range(args.rounds):
        for measure_name, run_it in measures.items():
            for name, (url, proc) in rotated(configs, r):
                rate, bad = measure(results[measure_name][name], proc, lambda: run_it(url))
                print(f"round {r + 1} {measure_name} {name}: {rate:.0f}/s, {bad} non-2xx", file=sys.stderr)
    lines = [
        f"Machine: {os.cpu_count()} cores, {sh('uname', '-sr').stdout.strip()}; {args.rounds} interleaved rounds of {args.duration}s, "
        f"{conns} connections (h2load: 10 streams each; handshakes: {4 * threads} s_time loops); gateway workers: {place.workers}; "
        f"{place.text}; certificate key: {args.tls_key}, one certificate for all.",
        "",
        "| measure | gateway | per second (median) | vs nginx | vs HAProxy | non-2xx | CPU µs each |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = []
    for measure_name, res in results.items():
        med = {n: statistics.median(v["rps"]) for n, v in res.items()}
        for name in configs:
            cpu = f"{statistics.median(res[name]['cpu']):.1f}" if res[name]["cpu"] else "-"
            lines.append(f"| {measure_name} | {name} | {med[name]:.0f} | {med[name] / med['nginx']:.2f} | {med[name] / med['haproxy']:.2f} "
                         f"| {res[name]['non2xx']} | {cpu} |")
        for name in (n for n in configs if n.startswith("keygate")):
            ratios.append(f"- {measure_name}, {name}: " + ratio_line("/ the better peer", per_round(res[name]["rps"], better_peer(res, "rps")))
                          + "; " + ratio_line("CPU each / the better peer", per_round(res[name]["cpu"], better_peer(res, "cpu"))))
    publish("\n".join(lines + ["", *ratios]), "results-tls-pinned.md" if args.pin else "results-tls.md")


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
    ap.add_argument("--tls", action="store_true",
                    help="TLS termination instead: keygate-tls, nginx and HAProxy with one certificate, over HTTP/1.1 (wrk) and "
                         "HTTP/2 (h2load -m 10), and full and resumed handshakes per second (openssl s_time)")
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
        tls_listener = f'tls = {{ cert = "{work}/cert.pem", key = "{work}/key.pem" }}'
        specs = [
            ("keygate", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-redis", keygate, "", f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"', 'backend = "redis"'),
            ("keygate-tls", keygate, tls_listener, '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-https-upstream", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-quotas", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
            ("keygate-guarded", keygate, "", '[store]\npath = "keygate.db"', 'backend = "local"'),
        ]
        plain = f'url = "http://127.0.0.1:{up_port}"'
        upstreams = {"keygate-https-upstream": f'url = "https://127.0.0.1:{up_tls_port}"\nserver_name = "localhost"\nca_file = "{work}/ca.pem"'}
        if args.baseline:
            specs.insert(1, ("keygate-baseline", args.baseline, "", '[store]\npath = "keygate.db"', 'backend = "local"'))
        if args.tls:
            # TLS mode: keygate-tls (and the baseline, over TLS) against the peers over TLS.
            specs = [("keygate-tls" if n == "keygate-tls" else "keygate-tls-baseline", b, tls_listener, st, rt)
                     for n, b, _, st, rt in specs if n in ("keygate-tls", "keygate-baseline")]
        for name, binary, extra, store, rate in specs:
            port, admin = free_port(), free_port()
            conf = keygate_conf(work, name, port, admin, upstreams.get(name, plain), extra, store, rate)
            if token is None:
                token = json.loads(sh(binary, "--config", str(conf), "keys", "create", "--name", "bench", "--role", "reader", "--json").stdout)["data"]["apiKey"]
            else:
                plan = ["--plan", "metered"] if name == "keygate-quotas" else []
                sh(binary, "--config", str(conf), "keys", "import", "--token", token, "--name", "bench", "--role", "reader", *plan)
            procs.append(Proc([*place.gateway, binary, "--config", str(conf), "serve"], port, env=env))
            scheme = "https" if name.startswith("keygate-tls") else "http"
            configs[name] = (f"{scheme}://127.0.0.1:{port}/api/lists", procs[-1])
        peers = start_peers(work, place, up_port, token, (f"{work}/cert.pem", f"{work}/key.pem") if args.tls else None)
        procs += [p for _, p in peers.values()]
        if args.tls:
            return tls_rounds(args, place, {**peers, **configs}, token)
        configs = {"direct": (f"http://127.0.0.1:{up_port}/api/lists", None), **peers, **configs}
        if args.only:
            keep = set(args.only.split(",")) | set(PEERS)
            configs = {n: c for n, c in configs.items() if n in keep}

        # Warm up every configuration (caches, pools, TLS sessions).
        for url, _ in configs.values():
            wrk(url, token, 2, args.connections, place.load_threads, place.load)

        results = {name: {"rps": [], "cpu": [], "non2xx": 0} for name in configs}
        for r in range(args.rounds):
            for name, (url, proc) in rotated(configs, r):
                rps, non2xx = measure(results[name], proc,
                                      lambda: wrk(url, token, args.duration, args.connections, place.load_threads, place.load))
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
            "| configuration | throughput (req/s, median) | vs nginx | vs HAProxy | vs direct | non-2xx | CPU µs/request | p50 ms | p99 ms | p99.9 ms | non-2xx at fixed rate |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
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
            lines.append(f"| {name} | {med[name]:.0f} | {med[name] / med['nginx']:.2f} | {med[name] / med['haproxy']:.2f} | {vs_direct} "
                         f"| {results[name]['non2xx']} | {cpu} | {lcols} |")
        lines += ["", *paired_ratios(results, lat)]
        for a, b in [("keygate", "keygate-baseline"), ("keygate-quotas", "keygate"), ("keygate-redis", "keygate"),
                     ("keygate-https-upstream", "keygate")]:
            if a not in results or b not in results:
                continue
            lines.append(f"- {a} / {b}, round by round: "
                         + ratio_line("throughput", per_round(results[a]["rps"], results[b]["rps"]), 3) + "; "
                         + ratio_line("CPU per request", per_round(results[a]["cpu"], results[b]["cpu"]), 3))
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

#!/usr/bin/env python3
"""User-space instructions per request, counted by valgrind (callgrind):
keygate against nginx doing the same job, on the same requests.

    python3 benches/load/instructions.py [--keygate PATH ...] [--duration 10]

Wall-clock figures on a shared machine move with the neighbours; instruction
counts do not (the same binary and inputs give the same count whatever else
runs). Each gateway runs alone under callgrind with one worker, in front of
the same upstream nginx (not counted); wrk sends a warm-up, the counters
are zeroed, wrk runs again and the counters are dumped. The figure is the
program's instructions over that window divided by the requests served.
Kernel work (system calls, TCP) is not counted: both gateways make the same
system calls per request (two reads, two writes), see BENCHMARKS.md.

Give --keygate several times to compare builds (e.g. before/after a change);
--keygate-quotas PATH measures a binary with the key on a plan of three
windows (minute, day and month quotas), as the load script's keygate-quotas;
--keygate-guarded PATH with [abuse] failed_credentials, a server.deny
list and an in-flight limit (rate_limit.max_in_flight) on;
--keygate-https-upstream PATH forwarding over TLS to the upstream's HTTPS
port (a private CA, verified), as the load script's keygate-https-upstream;
--keygate-h2 PATH serving HTTP/2 over TLS (an ECDSA P-256 certificate),
counted with h2load (4 connections, 10 streams each) instead of wrk: the
TLS records, HPACK and the h2 crate's frames per request (no nginx figure:
the two TLS libraries' assembly differs under valgrind).
Needs valgrind (installed from Debian's packages if missing), nginx and wrk.
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the load script's helpers: configs, ports, processes)


def ensure_valgrind():
    if not shutil.which("valgrind"):
        print("installing valgrind from Debian's packages", file=sys.stderr)
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "valgrind"], check=True, capture_output=True)


# --keep: where the callgrind dumps are copied (for callgrind_annotate).
KEEP = None


def answered(tool, url, token, seconds):
    """Requests `tool` (run.wrk, or run.h2load over HTTP/2) had answered in
    `seconds`, from one thread on 4 connections; errors abort the count."""
    _, total, bad = tool(url, token, seconds, 4, 1)
    if bad:
        raise SystemExit(f"{url} answered {bad} errors during the count")
    return total


def total_instructions(out_file):
    text = run.sh("callgrind_annotate", out_file).stdout
    return int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))


def count(name, cmd, port, url, token, work, seconds, cwd=None, tool=run.wrk):
    """Runs `cmd` under callgrind while `tool` sends requests; returns
    instructions per request."""
    out = Path(work) / f"callgrind-{name}.out"
    proc = run.Proc(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], port,
                    env=dict(os.environ, KEYGATE_LOG="warn"), cwd=cwd)
    try:
        time.sleep(1)
        answered(tool, url, token, 3)
        run.sh("callgrind_control", "-z", str(proc.p.pid))
        requests = answered(tool, url, token, seconds)
        run.sh("callgrind_control", "-d", str(proc.p.pid))
        time.sleep(1)
        dumps = sorted(Path(work).glob(f"callgrind-{name}.out.*"))
        if KEEP:
            shutil.copy(dumps[-1], Path(KEEP) / f"callgrind-{name}.out")
        return total_instructions(str(dumps[-1])) / requests, requests
    finally:
        proc.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keygate", action="append", help="a keygate binary (repeatable); default: a fresh release build")
    ap.add_argument("--keygate-quotas", action="append", default=[], help="a keygate binary measured with three windows (repeatable)")
    ap.add_argument("--keygate-guarded", action="append", default=[],
                    help="a keygate binary measured with the failed-credential guard and a deny list on (repeatable)")
    ap.add_argument("--keygate-https-upstream", action="append", default=[],
                    help="a keygate binary measured forwarding to the upstream over TLS (repeatable)")
    ap.add_argument("--keygate-h2", action="append", default=[],
                    help="a keygate binary serving HTTP/2 over TLS, counted with h2load (repeatable)")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--keep", help="a folder to copy each gateway's callgrind dump to, for callgrind_annotate")
    args = ap.parse_args()
    global KEEP
    KEEP = args.keep
    ensure_valgrind()
    run.ensure_tools(need_oha=False)
    plain = (
        [str(Path(b).resolve()) for b in args.keygate or []]
        if args.keygate or args.keygate_quotas or args.keygate_guarded or args.keygate_https_upstream or args.keygate_h2
        else [run.keygate_binary()]
    )
    # Each binary with what it is measured with: False (plain), True (three
    # windows), "guarded", "https" or "h2".
    binaries = (
        [(b, False) for b in plain]
        + [(str(Path(b).resolve()), True) for b in args.keygate_quotas]
        + [(str(Path(b).resolve()), "guarded") for b in args.keygate_guarded]
        + [(str(Path(b).resolve()), "https") for b in args.keygate_https_upstream]
        + [(str(Path(b).resolve()), "h2") for b in args.keygate_h2]
    )
    work = tempfile.mkdtemp(prefix="keygate-instr-")
    procs = []
    try:
        up_port, up_tls_port, upstream = run.start_upstream(work, 1)
        procs.append(upstream)
        if args.keygate_h2:
            run.sh("openssl", "req", "-x509", *run.TLS_KEYS["ec"], "-nodes", "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem",
                   "-days", "2", "-subj", "/CN=localhost")
        results = []
        token = None
        for i, (binary, kind) in enumerate(binaries):
            port, admin = run.free_port(), run.free_port()
            # keygate_conf adds the three-window plan to the config of that name.
            name = {"guarded": f"keygate-guarded{i}", "https": f"keygate-https{i}", "h2": f"keygate-h2-{i}",
                    True: f"keygate-kind{i}"}.get(kind, f"keygate{i}")
            upstream_line = (f'url = "https://127.0.0.1:{up_tls_port}"\nserver_name = "localhost"\nca_file = "{work}/ca.pem"'
                             if kind == "https" else f'url = "http://127.0.0.1:{up_port}"')
            listener = f'\ntls = {{ cert = "{work}/cert.pem", key = "{work}/key.pem" }}' if kind == "h2" else ""
            conf = run.keygate_conf(work, name, port, admin, upstream_line, extra_server="workers = 1" + listener)
            plan = ["--plan", "metered"] if kind is True else []
            if token is None:
                made = run.sh(binary, "--config", str(conf), "keys", "create", "--name", "bench", "--role", "reader", *plan, "--json")
                token = json.loads(made.stdout)["data"]["apiKey"]
            else:
                run.sh(binary, "--config", str(conf), "keys", "import", "--token", token, "--name", "bench", "--role", "reader", *plan)
            scheme, tool = ("https", run.h2load) if kind == "h2" else ("http", run.wrk)
            per, served = count(name, [binary, "--config", str(conf), "serve"], port, f"{scheme}://127.0.0.1:{port}/api/lists", token, work,
                                args.duration, cwd=conf.parent, tool=tool)
            label = {True: ", three windows", "guarded": ", guard, deny list and in-flight limit on", "https": ", upstream over TLS",
                     "h2": ", HTTP/2 over TLS"}.get(kind, "")
            results.append((f"keygate ({binary}{label})", per, served))
            print(f"keygate {binary}: {per:,.0f} instructions/request over {served} requests", file=sys.stderr)
        ng_port = run.free_port()
        conf = run.nginx_conf(work, ng_port, run.gateway_nginx_body(ng_port, up_port, token), 1)
        per, served = count("nginx", [run.nginx_bin(), "-c", str(conf), "-g", "daemon off; master_process off;"], ng_port,
                            f"http://127.0.0.1:{ng_port}/api/lists", token, work, args.duration)
        results.append(("nginx (same job)", per, served))
        lines = ["| gateway | instructions / request | vs nginx | requests counted |", "| --- | ---: | ---: | ---: |"]
        for name, per, served in results:
            lines.append(f"| {name} | {per:,.0f} | {per / results[-1][1]:.2f} | {served} |")
        run.publish("\n".join(lines), "instructions.md")
    finally:
        run.stop_all(procs, work)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where a keygate request's instructions go, by area, from a callgrind dump
that instructions.py kept:

    python3 benches/load/instructions.py --keygate BIN --keep /tmp/dumps
    python3 benches/load/areas.py /tmp/dumps/callgrind-keygate0.out REQUESTS [--functions [N]]

REQUESTS is the "requests counted" column of instructions.md. Each function's
own instructions (not its callees') go to the first area whose pattern
matches its name; code the compiler inlined counts for the function it was
inlined into. With --functions [N], each area's N (6) largest functions
follow it.
Build with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only for names that
point at lines (callgrind_annotate --auto=yes).
"""
import argparse, collections, re, subprocess

# (area, pattern over the function's name), first match wins.
AREAS = [
    ("httparse: the lines of both heads (the client's request, the upstream's answer)", r"httparse::"),
    ("the request head into an http::Request (names, values, target)",
     r"http1::server::head|HeaderMap<T>::try_append|try_reserve_one|hash_elem|HeaderName::from_bytes|StandardHeader|HeaderValue"
     r"|PathAndQuery|Uri::from|Method::from|converts::from_utf8|BytesMut::split_to|BytesMut::freeze"
     r"|drop_in_place<http::header::map::HeaderMap>|drop_in_place<http::request::Parts>|drop_in_place<\[http::header::map::Bucket"
     r"|ExtraValue|drop_in_place<http::uri"),
    ("the upstream's answer into header lines (status, framing, hop-by-hop)", r"http1::client::parse_head|HeaderLines|http1::Named|read_head"),
    ("the decision: credential, token shape, cache, IP, route, permission, limiter, usage",
     r"keygate::(decide|credentials|keys::token|cache|policy|ratelimit::(meter|local|Counter)|pipeline::authorise)"
     r"|crc32fast|siphasher|sha2|dashmap|hashbrown|arc_swap|RoleSet|subtle|CharSearcher|trim_matches"),
    ("writing the upstream request", r"write_request|Outgoing|each_field|frames_or_hops|proxy::"),
    ("writing the response (head, rate-limit fields, date)",
     r"server::write|Conn<I>::respond|render_fields|render_credit|Fields::|ClientSink|itoa|RateHeaders|encode_head"),
    ("header lines copied out (write_line)", r"http1::write_line"),
    ("the request path's own code (phases, trace, metrics, moves of large values)",
     r"keygate::pipeline|keygate::server::drive|correlation|telemetry|prometheus|metrics|__memcpy|__memmove|__memset|drop_in_place"
     r"|UpstreamBody|http1::server::gone|body::|Deadline|pool::"),
    ("tokio: event loop, wakers, socket reads and writes", r"tokio|mio|epoll|recv|send|__libc|syscall|cancellation|pthread|futex|bytes::"),
    ("the allocator (mimalloc)", r"mi_|_mi_"),
    ("the clock", r"Timespec|clock_gettime|Instant|SystemTime|__vdso"),
]
# Entries callgrind_annotate lists with their callees' cost (thread entry points).
WHOLE = ("<std::sys::thread::unix::Thread>::new::thread_start", "core::ops::function::FnOnce::call_once{{vtable.shim}}", "clone",
         "start_thread", "std::sys::backtrace::__rust_begin_short_backtrace", "(below main)", "__libc_start")


def own_costs(dump):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=no", dump],
                         capture_output=True, text=True, check=True).stdout
    costs, total = collections.Counter(), 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)", line)
        if not m or "=>" in line:
            continue
        value = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = value
            continue
        name = re.sub(r"^[^ ]*?\.(rs|c|S|h|cc):", "", re.sub(r" \[.*\]$", "", m.group(2)))
        if not name.startswith(WHOLE):
            costs[name] += value
    return costs, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump")
    ap.add_argument("requests", type=int)
    ap.add_argument("--functions", type=int, nargs="?", const=6, default=0, help="list each area's N largest functions (6)")
    args = ap.parse_args()
    costs, total = own_costs(args.dump)
    areas, members = collections.Counter(), collections.defaultdict(list)
    for name, value in costs.items():
        area = next((a for a, pattern in AREAS if re.search(pattern, name)), "everything else")
        areas[area] += value
        members[area].append((value, name))
    print("| area | instructions / request |\n| --- | ---: |")
    for area, value in areas.most_common():
        print(f"| {area} | {value / args.requests:,.0f} |")
        if args.functions:
            for v, name in sorted(members[area], reverse=True)[:args.functions]:
                print(f"| &nbsp;&nbsp;`{name[:90]}` | {v / args.requests:,.0f} |")
    print(f"| all (program total) | {total / args.requests:,.0f} |")


if __name__ == "__main__":
    main()

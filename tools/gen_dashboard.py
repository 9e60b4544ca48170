#!/usr/bin/env python3
"""Writes deploy/grafana/keygate.json, the Grafana dashboard for keygate.

Edit the panels here and run `python3 tools/gen_dashboard.py`; the test
suite (tests/it/deploy_kit.rs) checks that the committed file is this
script's output and that every metric it reads is one keygate exports.
"""
import json
import os
import pathlib

RATE = "$__rate_interval"
SEL = 'instance=~"$instance"'

# (title, unit, [(expr, legend)], width)
ROWS = [
    ("Traffic", [
        ("Requests by outcome", "reqps", [(f'sum by (outcome) (rate(keygate_requests_total{{{SEL}}}[{RATE}]))', "{{outcome}}")], 12),
        ("Refusals by code", "reqps", [(f'sum by (code) (rate(keygate_requests_total{{{SEL},code!="none"}}[{RATE}]))', "{{code}}")], 12),
    ]),
    ("Latency", [
        ("Gateway latency (keygate's own time)", "s", [
            (f'histogram_quantile(0.5, sum by (le) (rate(keygate_gateway_latency_seconds_bucket{{{SEL}}}[{RATE}])))', "p50"),
            (f'histogram_quantile(0.99, sum by (le) (rate(keygate_gateway_latency_seconds_bucket{{{SEL}}}[{RATE}])))', "p99"),
        ], 12),
        ("Upstream latency", "s", [
            (f'histogram_quantile(0.5, sum by (le, upstream) (rate(keygate_upstream_latency_seconds_bucket{{{SEL}}}[{RATE}])))', "p50 {{upstream}}"),
            (f'histogram_quantile(0.99, sum by (le, upstream) (rate(keygate_upstream_latency_seconds_bucket{{{SEL}}}[{RATE}])))', "p99 {{upstream}}"),
        ], 12),
    ]),
    ("Keys and limits", [
        ("Key cache hit ratio", "percentunit", [(
            f'sum(rate(keygate_cache_hits_total{{{SEL}}}[{RATE}])) / (sum(rate(keygate_cache_hits_total{{{SEL}}}[{RATE}])) + sum(rate(keygate_cache_misses_total{{{SEL}}}[{RATE}])))',
            "hit ratio")], 8),
        ("Rate-limit decisions", "reqps", [
            (f'sum by (decision) (rate(keygate_ratelimit_decisions_total{{{SEL}}}[{RATE}]))', "{{decision}}"),
            (f'sum by (policy) (rate(keygate_ratelimit_fallback_total{{{SEL}}}[{RATE}]))', "fallback {{policy}}"),
        ], 8),
        ("Revocation lag", "s", [
            (f'histogram_quantile(0.99, sum by (le) (rate(keygate_revocation_lag_seconds_bucket{{{SEL}}}[{RATE}])))', "p99"),
            (f'histogram_quantile(0.5, sum by (le) (rate(keygate_revocation_lag_seconds_bucket{{{SEL}}}[{RATE}])))', "p50"),
        ], 8),
    ]),
    ("Stores and upstreams", [
        ("Store and Redis errors", "ops", [
            (f'sum by (operation) (rate(keygate_store_errors_total{{{SEL}}}[{RATE}]))', "store {{operation}}"),
            (f'sum by (op, result) (rate(keygate_redis_calls_total{{{SEL},result!="ok"}}[{RATE}]))', "redis {{op}} {{result}}"),
        ], 8),
        ("Upstream targets", "reqps", [
            (f'sum by (upstream, target, result) (rate(keygate_upstream_requests_total{{{SEL}}}[{RATE}]))', "{{upstream}} {{target}} {{result}}"),
            (f'sum by (upstream, target) (increase(keygate_upstream_ejections_total{{{SEL}}}[{RATE}]))', "ejected {{target}}"),
        ], 8),
        ("Connections and reloads", "short", [
            (f'sum(keygate_open_connections{{{SEL}}})', "open connections"),
            (f'sum by (result) (increase(keygate_config_reloads_total{{{SEL}}}[1h]))', "reloads {{result}} (1h)"),
        ], 8),
    ]),
    ("Process", [
        ("CPU", "percentunit", [(f'rate(process_cpu_seconds_total{{job="keygate",{SEL}}}[{RATE}])', "{{instance}}")], 8),
        ("Resident memory", "bytes", [(f'process_resident_memory_bytes{{job="keygate",{SEL}}}', "{{instance}}")], 8),
        ("Open file descriptors", "short", [(f'process_open_fds{{job="keygate",{SEL}}}', "{{instance}}")], 8),
    ]),
]


def dashboard():
    panels, y, next_id = [], 0, 1
    for row_title, row in ROWS:
        panels.append({"type": "row", "title": row_title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        for title, unit, queries, width in row:
            panels.append({
                "type": "timeseries",
                "title": title,
                "id": next_id,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(queries)
                ],
            })
            next_id += 1
            x += width
        y += 8
    return {
        "uid": "keygate",
        "title": "keygate",
        "tags": ["keygate", "api-gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "instance", "type": "query", "label": "Node", "includeAll": True, "multi": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(keygate_build_info, instance)", "refId": "instances"},
             "definition": "label_values(keygate_build_info, instance)", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def main():
    default = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "keygate.json"
    # The tests write elsewhere to compare with the committed file.
    out = pathlib.Path(os.environ.get("KEYGATE_DASHBOARD_OUT", default))
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

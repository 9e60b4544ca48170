//! The shape of `src/`: which top-level module may use which. Modules stand
//! on floors; a module uses only modules on lower floors or its own, and
//! the graph of uses has no cycle. A new module must be given a floor here,
//! and an arrow that runs up must be listed in `UPWARD` with its reason.
//!
//! Uses are read from the source text: every `crate::name` path (braced
//! groups included) and, in a top-level file, every `super::name`. Comment
//! lines are skipped; test modules count, as their code is the module's too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// From the ground up. See docs/architecture.md for what each floor is.
const FLOORS: &[(&str, &[&str])] = &[
    (
        "ground",
        &[
            "body",
            "clock",
            "correlation",
            "credentials",
            "envelope",
            "http1",
            "metrics",
            "policy",
            "tls",
            "webhooks",
            "websocket",
        ],
    ),
    ("model", &["keys", "config", "events", "leaks"]),
    ("storage", &["store"]),
    ("node", &["cache", "ratelimit", "realtime"]),
    ("answers", &["error", "proxy", "scanning", "telemetry"]),
    ("decisions", &["state", "background", "decide", "pipeline", "manage", "outbox"]),
    ("surfaces", &["server", "admin", "demo", "fuzzing"]),
    ("commands", &["cli"]),
];

/// Arrows allowed to run up a floor: (from, to, why). At most four.
const UPWARD: &[(&str, &str, &str)] = &[];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn src_has_no_import_cycle_and_no_arrow_runs_up() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = uses_of(&src);
    let floor_of: BTreeMap<&str, usize> =
        FLOORS.iter().enumerate().flat_map(|(i, (_, mods))| mods.iter().map(move |m| (*m, i))).collect();

    let unplaced: Vec<&String> = graph.keys().filter(|m| !floor_of.contains_key(m.as_str())).collect();
    assert!(unplaced.is_empty(), "modules with no floor in FLOORS: {unplaced:?}");
    let gone: Vec<&&str> = floor_of.keys().filter(|m| !graph.contains_key(**m)).collect();
    assert!(gone.is_empty(), "FLOORS names modules src/ does not have: {gone:?}");

    assert!(UPWARD.len() <= 4, "more than four arrows run up");
    let mut up = Vec::new();
    for (from, tos) in &graph {
        for (to, files) in tos {
            let allowed = UPWARD.iter().any(|(f, t, _)| f == from && t == to);
            if floor_of.get(to.as_str()) > floor_of.get(from.as_str()) && !allowed {
                up.push(format!("{from} -> {to} (in {})", files.iter().cloned().collect::<Vec<_>>().join(", ")));
            }
        }
    }
    assert!(up.is_empty(), "arrows that run up a floor:\n  {}", up.join("\n  "));

    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

/// The checker itself finds what it must: a cycle, a braced group, a
/// `super::` from a top-level file, and nothing in a comment.
#[test]
fn the_module_scan_sees_cycles_groups_and_super() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod a; pub mod b; pub mod c;");
    write("a/mod.rs", "use crate::{b::X, c};\n// crate::z in a comment\n");
    write("b.rs", "fn f() { super::c::g() }");
    write("c.rs", "pub fn g() { crate::a::h() }");
    let graph = uses_of(dir.path());
    let names = |m: &str| graph[m].keys().cloned().collect::<Vec<_>>();
    assert_eq!(names("a"), ["b", "c"]);
    assert_eq!(names("b"), ["c"]);
    assert_eq!(names("c"), ["a"]);
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}

/// Every top-level module of `src` and the other top-level modules it uses,
/// with the files that use each.
fn uses_of(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut used = paths_after(&text, "crate::");
        if rel.components().count() == 1 {
            used.extend(paths_after(&text, "super::"));
        }
        let entry = graph.entry(top.clone()).or_default();
        for name in used {
            if name != top && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                entry.entry(name).or_default().insert(rel.display().to_string());
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The first segment of every path after `prefix`: `crate::a::b` gives
/// `a`, `crate::{a::b, c}` gives `a` and `c`. `$crate::` is not ours.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        out.push(ident_at(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.push(ident_at(rest));
        }
    }
    out.retain(|n| !n.is_empty() && n != "self");
    out
}

fn ident_at(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The strongly connected groups of more than one module (Tarjan), each
/// sorted, so a cycle is named whole.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flat_map(|tos| tos.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(lw));
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

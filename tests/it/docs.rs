//! The documents are references: every link between them (and into the
//! tree) leads somewhere, every `#anchor` names a heading of its target,
//! and docs/interface.md's contents list names each of its sections once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, BENCHMARKS.md and every Markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        !fenced && !line.starts_with("```")
    })
}

/// Every heading's anchor in a Markdown text (a repeated one gets `-1`,
/// `-2`, ... as GitHub gives it); code blocks are skipped.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in prose(text).filter(|l| l.starts_with('#')) {
        let base = slug(line.trim_start_matches('#').replace('`', "").as_str());
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.insert(anchor);
    }
    out
}

/// The targets of `[text](target)` links outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut from = 0;
        while let Some(at) = line[from..].find("](").map(|i| from + i) {
            let Some(end) = line[at + 2..].find(')').map(|i| at + 2 + i) else { break };
            // A link inside a code span is no link.
            if line[..at].matches('`').count() % 2 == 0 {
                out.push(line[at + 2..end].to_string());
            }
            from = end;
        }
    }
    out
}

#[test]
fn every_link_and_anchor_in_the_documents_resolves() {
    let mut broken = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').map_or((link.as_str(), None), |(p, a)| (p, Some(a)));
            let target = if path.is_empty() { doc.clone() } else { doc.parent().unwrap().join(path) };
            let shown = doc.strip_prefix(root()).unwrap().display().to_string();
            if !target.exists() {
                broken.push(format!("{shown}: {link} (no such file)"));
                continue;
            }
            if let Some(anchor) = anchor {
                let heads = anchors(&std::fs::read_to_string(&target).unwrap_or_default());
                if !heads.contains(anchor) {
                    broken.push(format!("{shown}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

#[test]
fn the_interface_contents_list_names_every_section_once() {
    let text = std::fs::read_to_string(root().join("docs/interface.md")).unwrap();
    let start = text.find("\nContents:").expect("docs/interface.md has a `Contents:` paragraph");
    let paragraph = &text[start..start + 1 + text[start + 1..].find("\n\n").unwrap()];
    let listed: Vec<String> = links(paragraph).into_iter().filter_map(|l| l.strip_prefix('#').map(str::to_string)).collect();
    let sections: Vec<String> = text.lines().filter(|l| l.starts_with("## ")).map(|l| slug(&l[3..].replace('`', ""))).collect();
    assert_eq!(listed, sections, "the contents list, in order, against the `## ` sections");
}

#[test]
fn the_link_checker_sees_a_missing_file_and_a_missing_anchor() {
    let text = "# A title\n\n## Browsers (CORS)\n\nSee [x](#browsers-cors), `[y](no)` and [z](../README.md#tests).\n```\n[q](nope)\n```\n";
    assert_eq!(links(text), ["#browsers-cors", "../README.md#tests"]);
    assert!(anchors(text).contains("browsers-cors"));
    assert!(!anchors(text).contains("rate-limits"));
    assert!(Path::new(&root()).join("README.md").exists());
}

/// The fenced code blocks of a document in a language, in order.
fn code_blocks(doc: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    doc.split(fence.as_str()).skip(1).map(|rest| rest.split("```").next().unwrap_or("").to_string()).collect()
}

/// docs/webhooks.md's Python and Node verifiers accept a delivery keygate
/// signed and refuse it with its body or id changed.
#[test]
fn the_webhook_guide_verifiers_check_what_keygate_signs() {
    let guide = std::fs::read_to_string(root().join("docs/webhooks.md")).unwrap();
    let secret_text = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let secret = keygate::webhooks::SigningSecret::parse(secret_text).unwrap();
    let (id, body) = ("evt_docs0test1", r#"{"id":"evt_docs0test1","type":"key.disabled","data":{"keyId":"key_a"}}"#);
    let now = keygate::clock::now_unix();
    let signature = secret.sign(id, now, body.as_bytes()).unwrap();
    let cases = [(id, body, true), (id, &body.replace("disabled", "enabled") as &str, false), ("evt_other", body, false)];
    let python = code_blocks(&guide, "python");
    let js = code_blocks(&guide, "js");
    assert_eq!((python.len(), js.len()), (1, 1), "the guide has one verifier in each language");
    for (id, body, want) in cases {
        let sample = serde_json::json!({
            "secret": secret_text,
            "headers": { "webhook-id": id, "webhook-timestamp": now.to_string(), "webhook-signature": format!("v1,bm90IHRoaXM= {signature}") },
            "body": body,
        })
        .to_string();
        let py = format!(
            "{}\nimport json, sys\nd = json.loads(sys.argv[1])\nprint(verify(d['secret'], d['headers'], d['body'].encode()))\n",
            python[0]
        );
        let out = std::process::Command::new("python3").args(["-c", &py, &sample]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), if want { "True" } else { "False" }, "python: {out:?}");
        if std::process::Command::new("node").arg("--version").output().is_err()
            && crate::common::may_skip("node", "node is missing: the guide's Node verifier is not run")
        {
            continue;
        }
        let node = format!(
            "{}\nconst d = JSON.parse(process.argv[1]);\nconsole.log(verify(d.secret, d.headers, Buffer.from(d.body)));\n",
            js[0]
        );
        let out = std::process::Command::new("node").args(["-e", &node, &sample]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want.to_string(), "node: {out:?}");
    }
}

/// A `cargo install` the documents tell someone to run builds against the
/// lockfile (`--locked`); without it cargo picks newer versions than the
/// ones tested.
#[test]
fn every_cargo_install_in_the_documents_is_locked() {
    let mut unlocked = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for line in text.lines().filter(|l| l.contains("cargo install ")) {
            if !line.contains("--locked") {
                unlocked.push(format!("{}: {}", doc.display(), line.trim()));
            }
        }
    }
    assert!(unlocked.is_empty(), "cargo install without --locked:\n{}", unlocked.join("\n"));
}

//! docs/rpc.md keeps up with the target: every parameter each method
//! accepts (as the target itself lists them when refusing an unknown one)
//! is in the method's section, and every field of a live clone's
//! `bdev_clone_get_clones` object is in the clone object's table (a
//! method this build lacks yet, answered -32601, is skipped).

mod common;

use common::*;
use serde_json::json;

/// The text of docs/rpc.md from the heading `## {title}` to the next `## `.
fn section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/rpc.md has no section '{title}'"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The parameter names the target expects, from its refusal of an unknown
/// one ("unknown field `x`, expected one of `a`, `b`").
/// None when the target has no such method.
fn accepted(t: &Tgt, method: &str) -> Option<Vec<String>> {
    let (code, msg) = t
        .call(method, Some(json!({"no_such_parameter": 1})))
        .unwrap_err();
    if code == -32601 {
        return None;
    }
    let list = msg
        .split("expected one of ")
        .nth(1)
        .or_else(|| msg.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("{method}: {msg}"));
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect(),
    )
}

/// A table row of `text` whose first cell names `name` (alone, or in a
/// list such as `| source_bdev, destination_bdev |`).
fn documented(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("| ")
            .and_then(|rest| rest.split(" |").next())
            .is_some_and(|cell| cell.split(", ").any(|n| n == name))
    })
}

#[test]
fn every_parameter_and_field_is_documented() {
    let doc = std::fs::read_to_string(repo().join("docs/rpc.md")).unwrap();
    let dir = scratch("rpc-doc");
    let t = Tgt::start(&dir, "tgt", &[]);
    let mut missing = Vec::new();
    for method in [
        "bdev_clone_create",
        "bdev_clone_delete",
        "bdev_clone_get_clones",
        "bdev_clone_set_hydration",
        "bdev_clone_release_source",
        "bdev_clone_set_options",
    ] {
        let text = section(&doc, method);
        let Some(names) = accepted(&t, method) else {
            continue; // a method this build does not have yet
        };
        assert!(!names.is_empty(), "{method}");
        for p in names {
            if !documented(&text, &p) {
                missing.push(format!("{method}: parameter {p}"));
            }
        }
    }
    malloc(&t, "src", 4, 512);
    malloc(&t, "dst", 4, 512);
    malloc(&t, "meta", 1, 512);
    t.call(
        "bdev_clone_create",
        Some(
            json!({"name": "c0", "source_bdev": "src", "destination_bdev": "dst",
            "metadata_bdev": "meta"}),
        ),
    )
    .unwrap();
    let text = section(&doc, "bdev_clone_get_clones");
    for field in t.clone_info("c0").as_object().unwrap().keys() {
        if !documented(&text, field) {
            missing.push(format!("get_clones: field {field}"));
        }
    }
    assert!(missing.is_empty(), "docs/rpc.md lacks {missing:#?}");
    t.stop();
}

//! No Rust panic may unwind into C: every `extern "C" fn` that bdev_clone_spdk
//! defines must run its body inside `ffi::guard` (catch_unwind), or be listed
//! below as trivially panic-free, with the reason. Checked mechanically on
//! the sources, so a new entry point without a guard fails this test.

use std::path::Path;

/// Entry points that need no guard, and why.
const PANIC_FREE: &[(&str, &str)] = &[
    ("read_event", "empty: examine sees a removal after its read"),
    ("bdev_clone_rs_get_ctx_size", "returns a constant"),
    (
        "put_source_channel",
        "only SPDK calls and raw-pointer field writes: nothing that can panic",
    ),
    ("fn_io_type_supported", "a match on an integer"),
    ("fn_get_io_channel", "one SPDK call"),
    ("parse_arg", "returns a constant"),
    ("usage", "empty"),
    (
        "started",
        "ffi::notice of a constant string (CString::new of a NUL-free string)",
    ),
];

/// (name, body) of every `extern "C" fn` defined (with a body) in `src`.
fn extern_fns(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = src[at..].find("extern \"C\" fn ") {
        let start = at + i + "extern \"C\" fn ".len();
        let name: String = src[start..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body: from the first '{' after the signature to its match. A
        // declaration (in an `extern "C" {}` block) ends with ';' first.
        let rest = &src[start..];
        let (brace, semi) = (rest.find('{'), rest.find(';'));
        at = start;
        let Some(b) = brace else { break };
        if semi.is_some_and(|s| s < b) {
            continue;
        }
        let mut depth = 0;
        let mut end = b;
        for (j, c) in rest[b..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = b + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, rest[b..end].to_string()));
        at = start + end;
    }
    out
}

#[test]
fn every_extern_c_entry_point_is_guarded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bdev_clone_spdk/src");
    let mut checked = 0;
    let mut unguarded = Vec::new();
    let mut listed_seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        for (name, body) in extern_fns(&src) {
            checked += 1;
            if let Some((_, why)) = PANIC_FREE.iter().find(|(n, _)| *n == name) {
                listed_seen.push(name.clone());
                // Panic-free means no guard needed; keep the list honest.
                assert!(
                    !body.contains(".unwrap()")
                        && !body.contains(".expect(")
                        && !body.contains('['),
                    "{name} is listed as panic-free ({why}) but may panic:\n{body}"
                );
                continue;
            }
            // The guard must wrap the body: nothing that can panic before it.
            let Some(g) = body.find("guard(") else {
                unguarded.push(format!("{}: {name}", path.display()));
                continue;
            };
            let before = &body[..g];
            for risky in [".unwrap()", ".expect(", "json_value(", "[", "format!("] {
                assert!(
                    !before.contains(risky),
                    "{name}: `{risky}` runs before ffi::guard:\n{body}"
                );
            }
        }
    }
    assert!(
        unguarded.is_empty(),
        "extern \"C\" fns without ffi::guard (wrap them, or list them in PANIC_FREE with a reason): {unguarded:#?}"
    );
    for (n, _) in PANIC_FREE {
        assert!(
            listed_seen.iter().any(|s| s == n),
            "PANIC_FREE lists {n}, which no longer exists"
        );
    }
    assert!(
        checked >= 25,
        "only {checked} extern \"C\" fns found: parser broken?"
    );
    eprintln!("{checked} extern \"C\" entry points checked");
}

#[test]
fn the_parser_sees_guards_and_declarations() {
    let src = r#"
        unsafe extern "C" { fn decl(x: i32) -> i32; }
        unsafe extern "C" fn a(x: *mut c_void) { ffi::guard("a", (), || { if x.is_null() {} }) }
        pub extern "C" fn b() -> c_int { 0 }
    "#;
    let f = extern_fns(src);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].0, "a");
    assert!(f[0].1.contains("guard("));
    assert_eq!(f[1].0, "b");
}

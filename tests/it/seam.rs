//! The seam holds (SPEC 1): inbox rows are inserted by one module and the
//! mail provider is called by one module. Scans the source tree, so a new
//! call site anywhere else fails this test.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files under src/ whose code (comments aside) matches `pattern`.
fn files_matching(pattern: impl Fn(&str) -> bool) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut hits: Vec<String> = files
        .into_iter()
        .filter(|f| {
            let code: String = std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join(" ");
            pattern(
                &code
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_uppercase(),
            )
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    hits.sort();
    hits
}

#[test]
fn only_the_inbox_module_inserts_inbox_rows() {
    let hits = files_matching(|code| {
        code.contains("INTO NOTIFICATIONS") || code.contains("REPLACE INTO NOTIFICATIONS")
    });
    assert_eq!(hits, vec!["src/notify/inbox.rs".to_string()]);
}

#[test]
fn only_the_mail_sender_calls_the_mail_provider() {
    let hits =
        files_matching(|code| code.contains(".SEND_EMAIL(") || code.contains(".SEND_BATCH("));
    assert_eq!(hits, vec!["src/notify/delivery/sender.rs".to_string()]);
}

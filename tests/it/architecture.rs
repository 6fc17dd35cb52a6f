//! The invariants ARCHITECTURE.md states, checked on the source tree: who
//! may write inbox rows, call the mail provider, name the database driver,
//! the HTTP machinery or the HTTP client; that handlers open no
//! transactions; that nothing is sent inside one; no import cycles between
//! files; no file over 700 lines. Each rule names where its pattern must
//! match too, so a rename cannot make a rule pass by matching nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The one module that inserts inbox rows.
const INBOX_OWNER: &str = "src/notify/inbox.rs";
/// The one module that calls the mail provider.
const SENDER: &str = "src/notify/delivery/sender.rs";
/// Longest file, in lines, anywhere in src/ and tests/.
const MAX_LINES: usize = 700;

struct Source {
    /// Relative to the crate root, with `/` separators.
    path: String,
    /// The text without comments, whitespace runs folded to one space.
    code: String,
    lines: usize,
}

/// herald-bench is a measuring tool outside herald: it drives the binary
/// over HTTP and reads the database file, so the layering rules skip it.
const BENCH: &str = "src/bin/herald-bench";

fn sources(dir: &str) -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files);
    let mut out: Vec<Source> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            Source {
                path: f
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
                code: strip_comments(&text)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                lines: text.lines().count(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Removes `//` and `/* */` comments, keeping string literals whole.
fn strip_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&text[start..i]);
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => {
                // A char literal such as '"' must not open a string.
                out.push_str(&text[i..i + 3]);
                i += 3;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + len]);
                i += len;
            }
        }
    }
    out
}

/// The files of `sources` whose code matches `pattern`.
fn matching<'a>(sources: &'a [Source], pattern: &regex::Regex) -> Vec<&'a str> {
    sources
        .iter()
        .filter(|s| pattern.is_match(&s.code))
        .map(|s| s.path.as_str())
        .collect()
}

/// Asserts `pattern` matches only in files `allowed` accepts, and (when
/// `must_match` names one) in that file, so the rule is not vacuous.
fn only_in(rule: &str, pattern: &str, allowed: impl Fn(&str) -> bool, must_match: Option<&str>) {
    let src: Vec<Source> = sources("src")
        .into_iter()
        .filter(|s| !s.path.starts_with(BENCH))
        .collect();
    let pattern = regex::Regex::new(pattern).unwrap();
    let hits = matching(&src, &pattern);
    let offenders: Vec<&&str> = hits.iter().filter(|f| !allowed(f)).collect();
    assert!(offenders.is_empty(), "{rule}: broken by {offenders:?}");
    if let Some(owner) = must_match {
        assert!(
            hits.contains(&owner),
            "{rule}: the pattern no longer matches {owner}; update this rule"
        );
    }
}

#[test]
fn inbox_rows_are_inserted_only_by_the_inbox_module() {
    only_in(
        "inbox rows only from the inbox module",
        r"(?i)INSERT\s+(OR\s+\w+\s+)?INTO\s+[`\x22]?notifications\b",
        |f| f == INBOX_OWNER,
        Some(INBOX_OWNER),
    );
}

/// Every method of `MailProvider` that talks to the provider.
const PROVIDER_CALL: &str = r"(\.|::)\s*(send_email|send_batch)\s*\(";

#[test]
fn the_mail_provider_is_called_only_by_the_sender() {
    only_in(
        "mail provider calls only from the sender",
        PROVIDER_CALL,
        |f| f == SENDER,
        Some(SENDER),
    );
}

#[test]
fn the_database_driver_is_named_only_by_the_storage_layer() {
    only_in(
        "the drivers only in src/store/",
        r"\b(rusqlite|r2d2|r2d2_sqlite|r2d2_postgres)\b|\bpostgres::",
        |f| f.starts_with("src/store/"),
        Some("src/store/sql.rs"),
    );
}

#[test]
fn the_http_machinery_and_client_stay_in_their_layers() {
    only_in(
        "tiny_http nowhere in src/",
        r"\btiny_http\b",
        |_| false,
        None,
    );
    only_in(
        "mio only in the HTTP server",
        r"\bmio::",
        |f| f.starts_with("src/http/server/"),
        Some("src/http/server/io.rs"),
    );
    only_in(
        "ureq only in the mail providers and the webhook sender",
        r"\bureq::",
        |f| f.starts_with("src/mail/") || f == "src/notify/webhooks/sender.rs",
        Some("src/mail/resend.rs"),
    );
}

#[test]
fn handlers_and_the_cli_open_no_transactions_and_run_no_sql() {
    let above_services = |f: &str| f.starts_with("src/http/") || f == "src/cli.rs";
    for (rule, pattern, seen_in) in [
        (
            "a transaction or read opened on the store",
            r"\bstore(\(\))?\s*\.\s*(read|write|snapshot)\s*\(",
            "src/notify/service.rs",
        ),
        ("a storage connection type", r"\b(Tx|Conn)\s*<", INBOX_OWNER),
        ("statement arguments", r"\bargs!\s*\[", INBOX_OWNER),
        (
            "SQL text",
            r#""\s*(SELECT|INSERT|UPDATE|DELETE|PRAGMA|BEGIN)\s"#,
            INBOX_OWNER,
        ),
    ] {
        only_in(rule, pattern, |f| !above_services(f), Some(seen_in));
    }
}

/// The text of the balanced `(...)` or `{...}` group opening at `open`.
fn group(code: &str, open: usize) -> &str {
    let (o, c) = match code.as_bytes()[open] {
        b'(' => (b'(', b')'),
        _ => (b'{', b'}'),
    };
    let mut depth = 0;
    for (i, b) in code.bytes().enumerate().skip(open) {
        if b == o {
            depth += 1;
        } else if b == c {
            depth -= 1;
            if depth == 0 {
                return &code[open..=i];
            }
        }
    }
    &code[open..]
}

#[test]
fn nothing_is_sent_inside_a_transaction() {
    let src = sources("src");
    let sender = src.iter().find(|s| s.path == SENDER).expect("the sender");
    let call = regex::Regex::new(PROVIDER_CALL).unwrap();
    // Transactions are closures given to the store, and functions given a Tx.
    let opens = regex::Regex::new(r"\.\s*(write|snapshot|read|transaction)\s*\(").unwrap();
    let takes_tx = regex::Regex::new(r"\bfn\s+\w+[^{;]*\bTx\b[^{;]*\{").unwrap();
    let mut scopes = 0;
    for m in opens.find_iter(&sender.code) {
        let body = group(&sender.code, m.end() - 1);
        assert!(!call.is_match(body), "a provider call inside {body}");
        scopes += 1;
    }
    for m in takes_tx.find_iter(&sender.code) {
        let body = group(&sender.code, m.end() - 1);
        assert!(
            !call.is_match(body),
            "a provider call in a function given a Tx: {body}"
        );
        scopes += 1;
    }
    assert!(
        scopes > 0,
        "the sender writes its batches: this rule found no transaction"
    );
}

#[test]
fn no_file_is_longer_than_the_limit() {
    let long: Vec<(String, usize)> = sources("src")
        .into_iter()
        .chain(sources("tests"))
        .filter(|s| s.lines > MAX_LINES)
        .map(|s| (s.path, s.lines))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

/// The module path of a file of the library crate (`src/notify/email.rs`
/// -> `["notify", "email"]`), or None outside it.
fn module_of(path: &str) -> Option<Vec<String>> {
    let rel = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    if rel.starts_with("bin/") || rel == "main" {
        return None;
    }
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    Some(parts)
}

/// `use a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(expand_use)
        .map(|p| match p.as_str() {
            "self" => prefix.to_string(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// The code without its `#[cfg(test)] mod ... { }` blocks: tests may
/// reach anywhere, and their `use super::*` means the file itself.
fn without_tests(code: &str) -> String {
    let test_mod = regex::Regex::new(r"#\[cfg\(test\)\] (pub(\(\w+\))? )?mod \w+ \{").unwrap();
    let mut out = code.to_string();
    while let Some(m) = test_mod.find(&out) {
        let len = group(&out, m.end() - 1).len();
        out.replace_range(m.start()..m.end() - 1 + len, "");
    }
    out
}

/// Which files each file of the library uses items of: paths through
/// `crate::`, `super::`, `self::` and the file's own child modules, in `use`
/// trees and inline, each resolved to the deepest module that is a file.
/// Declaring a child (`mod x;`) is not a use.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = sources("src");
    let files: BTreeMap<Vec<String>, String> = src
        .iter()
        .filter_map(|s| Some((module_of(&s.path)?, s.path.clone())))
        .collect();
    let use_stmt = regex::Regex::new(r"\buse\s+([^;]+);").unwrap();
    let inline = regex::Regex::new(r"\b(crate|super|self)(::\w+)+").unwrap();
    let child = regex::Regex::new(r"\bmod\s+(\w+)\s*;").unwrap();
    let mut graph = BTreeMap::new();
    for s in &src {
        let Some(module) = module_of(&s.path) else {
            continue;
        };
        let code = without_tests(&s.code);
        let mut paths: Vec<String> = use_stmt
            .captures_iter(&code)
            .flat_map(|c| expand_use(&c[1]))
            .collect();
        paths.extend(inline.find_iter(&code).map(|m| m.as_str().to_string()));
        for c in child.captures_iter(&code) {
            // `email::record(...)` in the parent that declares `mod email;`.
            let by_name = regex::Regex::new(&format!(r"(^|[^:\w]){}(::\w+)+", &c[1])).unwrap();
            paths.extend(by_name.find_iter(&code).map(|m| {
                format!(
                    "self::{}",
                    m.as_str()
                        .trim_start_matches(|ch: char| !ch.is_alphanumeric() && ch != '_')
                )
            }));
        }
        let mut deps = BTreeSet::new();
        for path in paths {
            let mut segments = path.split("::").map(str::trim);
            let mut at: Vec<String> = match segments.next() {
                Some("crate") => Vec::new(),
                Some("self") => module.clone(),
                Some("super") => {
                    let mut m = module.clone();
                    m.pop();
                    m
                }
                _ => continue,
            };
            let mut target = at.clone();
            for seg in segments {
                if seg == "super" {
                    at.pop();
                    target = at.clone();
                    continue;
                }
                at.push(seg.to_string());
                if files.contains_key(&at) {
                    target = at.clone();
                }
            }
            if let Some(file) = files.get(&target) {
                if *file != s.path {
                    deps.insert(file.clone());
                }
            }
        }
        graph.insert(s.path.clone(), deps);
    }
    graph
}

/// The strongly connected components of more than one file (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let graph = dependencies();
    // The rule is not vacuous: known arrows are seen.
    assert!(graph["src/http/inbox.rs"].contains("src/notify/service.rs"));
    assert!(graph["src/notify/service.rs"].contains("src/store/users.rs"));
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between files: {found:#?}");
}

#[test]
fn the_cycle_finder_finds_a_cycle_through_three_files() {
    let mut graph = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(from.to_string())
            .or_insert_with(BTreeSet::new)
            .insert(to.to_string());
    }
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        expand_use("super::{a, b::{C, d as e}, self}"),
        ["super::a", "super::b::C", "super::b::d", "super"]
    );
}

//! Tidy checks over the workspace's sources, in the manner of rust-analyzer's `tidy.rs`: every Rust
//! file opens with a module doc, request-path code in the SDK and the filters does not panic, and
//! every filter README's configuration tables name exactly the fields its configuration accepts.
//!
//! Which files: every `.rs` file under the workspace root, found by walking the file system (so a
//! new file is checked before it is committed), except in directories named `target` or starting
//! with `.`, and in the fuzzing data directories `fuzz/{corpus,artifacts,seeds,coverage}`
//! (`fuzz/fuzz_targets` is checked).
//!
//! 1. **Module docs**: the file's first line is a `//!` line with text. Nothing may come before it:
//!    no blank line, no attribute (`#![...]` goes after the doc), no `/*! */` block doc.
//! 2. **No panics on a request path**: in `sdk/src`, `filters/*/src` and `examples/*/src` (a filter
//!    too, and the one users copy), no `.unwrap()`, `.expect(`, `.unwrap_err()`, `.expect_err(`
//!    (nor their `::unwrap` path forms), `panic!`, `unreachable!`, `todo!`, `unimplemented!`.
//!    `unwrap_or`, `unwrap_or_else`, `unwrap_or_default` are other names and fine. Test code is
//!    skipped, recognised as: `sdk/src/testing/**` (the SDK's test host, used only by tests); a
//!    file `tests.rs` whose sibling module file declares it `#[cfg(test)] mod tests;`; and the
//!    item (up to its closing `}` or `;`) after an attribute written exactly `#[cfg(test)]` or
//!    `#[test]`, or the rest of the enclosing block after `#![cfg(test)]`. Other cfg forms
//!    (`cfg(any(test, ..))`) are not test code. Comments, doc comments (doctests) and string and
//!    char literals are skipped by a small lexer.
//! 3. **Configuration tables**: each `filters/*/README.md`, and each `examples/*/README.md` with a
//!    configuration table, is declared in [`readmes`] with the filter it documents. The fields a
//!    configuration object accepts come from the filter's own parsing (`FilterHarness::new`): the
//!    configs use `#[serde(deny_unknown_fields)]`, so a probe `{"__tidy_probe__": 0}` placed at an
//!    object's position is refused with serde's "unknown field `__tidy_probe__`, expected one of
//!    `a`, `b`, ...". Every accepted field that takes an object (or a list of objects) is probed in
//!    turn, so nested objects are found from the code too. In the README's `## Configuration`
//!    section, tables whose first column is `field` document objects: an unlabelled table the top
//!    level, a table after a `**Label**` line the objects declared for that label; a row
//!    `` `a.b` `` or `` `a[].b` `` documents field `b` of object `a` (or of `a`'s list items) and
//!    field `a` of the table's object. An object without rows of its own must be declared as
//!    documented elsewhere ([`Doc`]): in its row's type cell, in the sentence defining a bold term,
//!    or as another filter's whole configuration. Each object's documented fields must equal its
//!    accepted fields, and every object the README documents must exist in the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use meshwasm::config::ConfigError;
use meshwasm::filter::RootFilter;
use meshwasm::testing::FilterHarness;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// Fails with every finding, one per line.
fn report(rule: &str, findings: &[String]) {
    assert!(
        findings.is_empty(),
        "{rule}: {} finding(s)\n{}\n",
        findings.len(),
        findings.join("\n")
    );
}

// ---- the files ----

/// Directories never walked (relative to the workspace root, `/`-separated).
fn skipped_dir(rel: &str, name: &str) -> bool {
    name == "target"
        || name.starts_with('.')
        || matches!(
            rel,
            "fuzz/corpus" | "fuzz/artifacts" | "fuzz/seeds" | "fuzz/coverage"
        )
}

/// Every `.rs` file of the workspace, as `/`-separated paths relative to its root, sorted.
fn rust_files() -> Vec<String> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !skipped_dir(&path, &name) {
                    walk(root, &path, out);
                }
            } else if kind.is_file() && name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace_root(), "", &mut out);
    out.sort();
    assert!(
        out.iter().any(|f| f == "sdk/src/lib.rs"),
        "the walk found no sdk/src/lib.rs: wrong workspace root?"
    );
    out
}

fn read(rel: &str) -> String {
    fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---- rule 1: module docs ----

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut bad = Vec::new();
    for rel in rust_files() {
        let text = read(&rel);
        let first = text.lines().next().unwrap_or("");
        let ok = first
            .strip_prefix("//!")
            .is_some_and(|rest| !rest.trim().is_empty());
        if !ok {
            let shown = if first.trim().is_empty() {
                "(blank line)".to_string()
            } else {
                first.chars().take(60).collect()
            };
            bad.push(format!("{rel}:1: starts with {shown}"));
        }
    }
    report(
        "every .rs file must open with a `//!` line saying what it is for (nothing before it)",
        &bad,
    );
}

// ---- rule 2: no panics outside tests ----

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Skips a `"..."` literal starting at `i`; returns the index after it.
fn skip_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while let Some(&ch) = c.get(i) {
        match ch {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Skips a char or byte literal, or a lifetime's quote, at `i` (a `'`); returns the next index.
fn skip_quote(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        // An escaped char literal: '\n', '\'', '\u{..}'.
        let mut j = i + 3;
        while c.get(j).is_some_and(|&ch| ch != '\'' && ch != '\n') {
            j += 1;
        }
        j + 1
    } else if c.get(i + 2) == Some(&'\'') {
        i + 3
    } else {
        // A lifetime or label: its name follows as an identifier.
        i + 1
    }
}

/// The identifiers and punctuation of Rust source, without comments and literals.
fn tokens(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while let Some(&ch) = c.get(i) {
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while c.get(i).is_some_and(|&x| x != '\n') {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i, &mut line);
        } else if ch == '\'' {
            i = skip_quote(&c, i);
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while c.get(i).is_some_and(|&x| x.is_alphanumeric() || x == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let after = c.get(i).copied();
            if matches!(word.as_str(), "r" | "br" | "cr") && matches!(after, Some('"' | '#')) {
                let mut j = i;
                while c.get(j) == Some(&'#') {
                    j += 1;
                }
                let hashes = j - i;
                if c.get(j) == Some(&'"') {
                    // A raw string: ends at `"` followed by as many `#`.
                    j += 1;
                    while j < c.len() {
                        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                            j += 1 + hashes;
                            break;
                        }
                        if c[j] == '\n' {
                            line += 1;
                        }
                        j += 1;
                    }
                    i = j;
                    continue;
                }
            }
            if matches!(word.as_str(), "b" | "c") && after == Some('"') {
                i = skip_string(&c, i, &mut line);
                continue;
            }
            if word == "b" && after == Some('\'') {
                i = skip_quote(&c, i);
                continue;
            }
            out.push(Token {
                tok: Tok::Ident(word),
                line,
            });
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_punct(toks: &[Token], i: usize, p: char) -> bool {
    toks.get(i).is_some_and(|t| t.tok == Tok::Punct(p))
}

fn ident_at(toks: &[Token], i: usize) -> Option<&str> {
    match toks.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// The index of the bracket closing the one at `open`, or the end.
fn closing(toks: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// The index after the item starting at `start`: after the `;` at its top level, or after the
/// `}` that closes its first top-level `{`. Stops before a bracket that closes an outer block.
fn end_of_item(toks: &[Token], start: usize) -> usize {
    let mut depth = 0i32;
    for (j, t) in toks.iter().enumerate().skip(start) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                if depth == 0 {
                    return j;
                }
                depth -= 1;
                if depth == 0 && t.tok == Tok::Punct('}') {
                    return j + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return j + 1,
            _ => {}
        }
    }
    toks.len()
}

/// The attribute at `i` (`#[...]` or `#![...]`): whether it is inner, its content without
/// spaces (`cfg(test)`), and the index of its `]`.
fn attribute(toks: &[Token], i: usize) -> Option<(bool, String, usize)> {
    if !is_punct(toks, i, '#') {
        return None;
    }
    let inner = is_punct(toks, i + 1, '!');
    let open = if inner { i + 2 } else { i + 1 };
    if !is_punct(toks, open, '[') {
        return None;
    }
    let close = closing(toks, open);
    let content = toks
        .get(open + 1..close)
        .unwrap_or_default()
        .iter()
        .map(|t| match &t.tok {
            Tok::Ident(s) => s.clone(),
            Tok::Punct(p) => p.to_string(),
        })
        .collect();
    Some((inner, content, close))
}

fn is_test_attribute(content: &str) -> bool {
    content == "test" || content == "cfg(test)"
}

const PANICKING_METHODS: [&str; 4] = ["unwrap", "expect", "unwrap_err", "expect_err"];
const PANICKING_MACROS: [&str; 4] = ["panic", "unreachable", "todo", "unimplemented"];

/// The panicking calls outside test code: (line, what).
fn panics_outside_tests(toks: &[Token]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    // Indices of the `{` enclosing the current position.
    let mut blocks: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Some((inner, content, close)) = attribute(toks, i) {
            if is_test_attribute(&content) {
                i = if inner {
                    // The rest of the enclosing block (or file) is test code.
                    match blocks.pop() {
                        Some(open) => closing(toks, open) + 1,
                        None => toks.len(),
                    }
                } else {
                    // Skip the other attributes of the item, then the item.
                    let mut j = close + 1;
                    while let Some((_, _, c)) = attribute(toks, j) {
                        j = c + 1;
                    }
                    end_of_item(toks, j)
                };
                continue;
            }
            i = close + 1;
            continue;
        }
        match &toks[i].tok {
            Tok::Punct('{') => blocks.push(i),
            Tok::Punct('}') => {
                blocks.pop();
            }
            Tok::Ident(name) => {
                let method = PANICKING_METHODS.contains(&name.as_str());
                let after_dot = i > 0 && is_punct(toks, i - 1, '.');
                let after_path = i > 1 && is_punct(toks, i - 1, ':') && is_punct(toks, i - 2, ':');
                if method && after_dot && is_punct(toks, i + 1, '(') {
                    found.push((toks[i].line, format!(".{name}(")));
                } else if method && after_path {
                    found.push((toks[i].line, format!("::{name}")));
                } else if PANICKING_MACROS.contains(&name.as_str()) && is_punct(toks, i + 1, '!') {
                    found.push((toks[i].line, format!("{name}!")));
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Whether `rel` is in the code that must not panic (before test-code exclusions).
fn request_path_code(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["sdk", "src", ..] => !rel.starts_with("sdk/src/testing/") && rel != "sdk/src/testing.rs",
        ["filters" | "examples", _, "src", ..] => true,
        _ => false,
    }
}

/// Whether `rel` is a `tests.rs` that its parent module declares `#[cfg(test)] mod tests;`.
fn is_test_module_file(rel: &str) -> bool {
    let Some(dir) = rel.strip_suffix("/tests.rs") else {
        return false;
    };
    // The declaring file: lib.rs, main.rs or mod.rs beside it, or `<dir>.rs` for `<dir>/tests.rs`.
    let mut parents: Vec<String> = ["lib.rs", "main.rs", "mod.rs"]
        .iter()
        .map(|f| format!("{dir}/{f}"))
        .collect();
    parents.push(format!("{dir}.rs"));
    parents.iter().any(|p| {
        let Ok(text) = fs::read_to_string(workspace_root().join(p)) else {
            return false;
        };
        let toks = tokens(&text);
        (0..toks.len()).any(|i| {
            attribute(&toks, i).is_some_and(|(inner, content, close)| {
                !inner
                    && content == "cfg(test)"
                    && ident_at(&toks, close + 1) == Some("mod")
                    && ident_at(&toks, close + 2) == Some("tests")
                    && is_punct(&toks, close + 3, ';')
            })
        })
    })
}

#[test]
fn no_panics_on_request_paths() {
    let mut bad = Vec::new();
    let mut scanned = 0;
    for rel in rust_files() {
        if !request_path_code(&rel) || is_test_module_file(&rel) {
            continue;
        }
        scanned += 1;
        for (line, what) in panics_outside_tests(&tokens(&read(&rel))) {
            bad.push(format!("{rel}:{line}: {what}"));
        }
    }
    assert!(scanned > 10, "only {scanned} files scanned");
    report(
        "no unwrap/expect/panic!/unreachable!/todo!/unimplemented! outside tests in sdk/src, \
         filters/*/src, examples/*/src (return an error or fall back: a panic aborts the VM)",
        &bad,
    );
}

#[test]
fn the_panic_scan_sees_what_it_should() {
    let src = r##"
//! doc .unwrap() in a comment
fn a() { x.unwrap(); let s = "panic!()"; let r = r#"y.expect("")"#; let c = '"'; }
fn b<'a>(v: &'a str) { v.unwrap_or_default(); v.unwrap_or(1); Option::unwrap(v); }
/* block .unwrap() /* nested */ */
#[cfg(test)]
mod tests { fn t() { x.unwrap(); panic!(); } }
#[test]
#[ignore]
fn t2() { todo!() }
#[cfg(any(test, fuzzing))]
fn c() { unreachable!() }
#[cfg(test)]
use x::y;
fn d() { z.expect("m"); let b = b'\''; unimplemented!(); }
mod inner { #![cfg(test)] fn e() { f.unwrap(); } }
fn g() { h.unwrap_err(); }
"##;
    let found = panics_outside_tests(&tokens(src));
    assert_eq!(
        found,
        vec![
            (3, ".unwrap(".to_string()),
            (4, "::unwrap".to_string()),
            (12, "unreachable!".to_string()),
            (15, ".expect(".to_string()),
            (15, "unimplemented!".to_string()),
            (17, ".unwrap_err(".to_string()),
        ]
    );
}

// ---- rule 3: README configuration tables ----

/// A filter's real configuration parsing and checks, as Envoy's `on_configure` runs them.
type Parse = fn(&str) -> Result<(), ConfigError>;

fn parse<F: RootFilter>(json: &str) -> Result<(), ConfigError> {
    FilterHarness::<F>::new(json).map(|_| ())
}

/// Where an object without rows of its own is documented.
#[derive(Clone, Copy, Debug)]
enum Doc {
    /// In the type cell of its own row: `object with optional `service`, ...` or
    /// `list of `{"name": "x-a"}`, ...` (backticked names and JSON keys).
    TypeCell,
    /// In the sentence of the Configuration section that defines this bold term
    /// (`A **string match** is ... `exact`, `prefix`...`).
    Term(&'static str),
    /// It is another filter's whole configuration (that README, that parsing).
    SameAs(&'static str, Parse),
}

struct FilterReadme {
    /// The README, relative to the workspace root.
    readme: &'static str,
    parse: Parse,
    /// `**Label**` before a table → the objects that table documents.
    labels: &'static [(&'static str, &'static [&'static str])],
    /// Objects documented outside tables of their own.
    elsewhere: &'static [(&'static str, Doc)],
}

/// Every README with a configuration reference, and the filter it documents.
fn readmes() -> Vec<FilterReadme> {
    const STRING_MATCH: Doc = Doc::Term("string match");
    vec![
        FilterReadme {
            readme: "filters/trace-propagation/README.md",
            parse: parse::<trace_propagation::TracePropagation>,
            labels: &[],
            elsewhere: &[],
        },
        FilterReadme {
            readme: "filters/service-metrics/README.md",
            parse: parse::<service_metrics::ServiceMetrics>,
            labels: &[],
            elsewhere: &[("identity", Doc::TypeCell)],
        },
        FilterReadme {
            readme: "filters/route-retries/README.md",
            parse: parse::<route_retries::RouteRetries>,
            labels: &[
                ("Policy", &["default", "rules[].policy"]),
                ("Match", &["rules[].match"]),
            ],
            elsewhere: &[
                ("rules[].match.headers[]", Doc::TypeCell),
                ("rules[].match.path", STRING_MATCH),
                ("rules[].match.authority", STRING_MATCH),
                ("rules[].match.route_name", STRING_MATCH),
                ("rules[].match.cluster", STRING_MATCH),
                ("rules[].match.headers[].value", STRING_MATCH),
            ],
        },
        FilterReadme {
            readme: "filters/mesh-sidecar/README.md",
            parse: parse::<mesh_sidecar::MeshSidecar>,
            labels: &[],
            elsewhere: &[
                (
                    "trace",
                    Doc::SameAs(
                        "filters/trace-propagation/README.md",
                        parse::<trace_propagation::TracePropagation>,
                    ),
                ),
                (
                    "metrics",
                    Doc::SameAs(
                        "filters/service-metrics/README.md",
                        parse::<service_metrics::ServiceMetrics>,
                    ),
                ),
                (
                    "retries",
                    Doc::SameAs(
                        "filters/route-retries/README.md",
                        parse::<route_retries::RouteRetries>,
                    ),
                ),
            ],
        },
        FilterReadme {
            readme: "examples/add-headers/README.md",
            parse: parse::<add_headers::AddHeaders>,
            labels: &[],
            elsewhere: &[],
        },
    ]
}

const PROBE: &str = "__tidy_probe__";

/// `a.b` (or `b` at the top level).
fn join(location: &str, field: &str) -> String {
    if location.is_empty() {
        field.to_string()
    } else {
        format!("{location}.{field}")
    }
}

fn shown(location: &str) -> &str {
    if location.is_empty() {
        "(top level)"
    } else {
        location
    }
}

/// A configuration with `inner` at `location` (`rules[].match` → `{"rules":[{"match":inner}]}`).
fn document_at(location: &str, inner: String) -> String {
    location
        .split('.')
        .filter(|s| !s.is_empty())
        .rev()
        .fold(inner, |inner, segment| {
            let (key, inner) = match segment.strip_suffix("[]") {
                Some(key) => (key, format!("[{inner}]")),
                None => (segment, inner),
            };
            format!("{{{}:{inner}}}", serde_json::to_string(key).unwrap())
        })
}

/// The fields the object at `location` accepts, from serde's refusal of an unknown one; `Err`
/// says what happened instead (then it is not an object that refuses unknown fields).
fn accepted_fields(parse: Parse, location: &str) -> Result<BTreeSet<String>, String> {
    let json = document_at(location, format!("{{\"{PROBE}\":0}}"));
    let e = match parse(&json) {
        Ok(()) => return Err(format!("{json} was accepted")),
        Err(e) => e,
    };
    let Some(rest) = e.reason.strip_prefix(&format!("unknown field `{PROBE}`")) else {
        return Err(format!("{json}: {e}"));
    };
    // serde: ", expected `a`", ", expected `a` or `b`", ", expected one of `a`, `b`, ..." or
    // ", there are no fields".
    Ok(rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect())
}

/// Names documented in free text: backticked identifiers, and the keys of backticked JSON.
fn names_in(text: &str) -> BTreeSet<String> {
    let is_ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut names = BTreeSet::new();
    for span in text.split('`').skip(1).step_by(2) {
        if is_ident(span) {
            names.insert(span.to_string());
            continue;
        }
        // `{"name": "x-a", "present": false}`: keys are the quoted strings before a colon.
        let quoted: Vec<&str> = span.split('"').collect();
        for (k, piece) in quoted.iter().enumerate().skip(1).step_by(2) {
            let after = quoted.get(k + 1).copied().unwrap_or("");
            if after.trim_start().starts_with(':') && is_ident(piece) {
                names.insert(piece.to_string());
            }
        }
    }
    names
}

/// One row of a configuration table.
struct Row {
    /// The object whose field it documents (`rules[]`; empty: the top level).
    location: String,
    field: String,
    type_cell: String,
    line: usize,
}

/// What a README's `## Configuration` section says.
#[derive(Default)]
struct ConfigSection {
    rows: Vec<Row>,
    /// Documented fields per object, rows and the parents they imply.
    documented: BTreeMap<String, BTreeSet<String>>,
    /// The section's paragraphs, each joined on one line.
    paragraphs: Vec<String>,
}

/// Cells of a table line; `\|` is a pipe inside a cell.
fn cells(line: &str) -> Vec<String> {
    let body = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut chars = body.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cells.last_mut().unwrap().push('|');
            }
            '|' => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(ch),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

fn config_section(f: &FilterReadme, errors: &mut Vec<String>) -> ConfigSection {
    let text = read(f.readme);
    let lines: Vec<&str> = text.lines().collect();
    let mut section = ConfigSection::default();
    let Some(start) = lines.iter().position(|l| l.trim() == "## Configuration") else {
        errors.push(format!("{}: no `## Configuration` section", f.readme));
        return section;
    };
    let end = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| l.starts_with("## "))
        .map_or(lines.len(), |(i, _)| i);
    let mut label: Option<String> = None;
    let mut paragraph = String::new();
    let mut in_code = false;
    let mut i = start + 1;
    while i < end {
        let line = lines[i].trim();
        if line.starts_with("```") {
            in_code = !in_code;
        }
        let is_table = !in_code && line.starts_with('|');
        let fence = line.starts_with("```");
        if in_code || fence || line.is_empty() || is_table || line.starts_with('#') {
            if !paragraph.is_empty() {
                section.paragraphs.push(std::mem::take(&mut paragraph));
            }
        } else {
            paragraph.push_str(line);
            paragraph.push(' ');
            if let Some(rest) = line.strip_prefix("**") {
                label = rest.split("**").next().map(str::to_string);
            }
        }
        if !is_table {
            i += 1;
            continue;
        }
        // A table: header, separator, rows.
        let header = cells(line);
        let table_end = (i..end)
            .find(|&k| !lines[k].trim().starts_with('|'))
            .unwrap_or(end);
        let bases: Vec<String> = match (&label, header.first().map(String::as_str)) {
            (_, Some(h)) if !h.eq_ignore_ascii_case("field") => Vec::new(),
            (None, _) => vec![String::new()],
            (Some(l), _) => match f.labels.iter().find(|(name, _)| name == l) {
                Some((_, objects)) => objects.iter().map(|o| o.to_string()).collect(),
                None => {
                    errors.push(format!(
                        "{}:{}: a `field` table after **{l}**: declare in tidy.rs which \
                         configuration objects it documents",
                        f.readme,
                        i + 1
                    ));
                    Vec::new()
                }
            },
        };
        for (k, row_line) in lines.iter().enumerate().take(table_end).skip(i + 2) {
            let row = cells(row_line);
            let first = row.first().map(String::as_str).unwrap_or("");
            let names: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
            let [name] = names.as_slice() else {
                errors.push(format!(
                    "{}:{}: the first cell should be one `field`, not {first:?}",
                    f.readme,
                    k + 1
                ));
                continue;
            };
            for base in &bases {
                let full = join(base, name);
                let (location, field) = match full.rsplit_once('.') {
                    Some((l, fd)) => (l.to_string(), fd),
                    None => (String::new(), full.as_str()),
                };
                let field = field.trim_end_matches("[]").to_string();
                if section
                    .rows
                    .iter()
                    .any(|r| r.location == location && r.field == field)
                {
                    errors.push(format!(
                        "{}:{}: `{}` is documented twice",
                        f.readme,
                        k + 1,
                        join(&location, &field)
                    ));
                }
                // The row documents its field and, for `a.b`, field `a` of the parent object.
                let mut object = location.clone();
                let mut child = field.clone();
                loop {
                    section
                        .documented
                        .entry(object.clone())
                        .or_default()
                        .insert(child.clone());
                    if object == *base || object.is_empty() {
                        break;
                    }
                    let (parent, last) = match object.rsplit_once('.') {
                        Some((p, l)) => (p.to_string(), l.to_string()),
                        None => (String::new(), object.clone()),
                    };
                    child = last.trim_end_matches("[]").to_string();
                    object = parent;
                }
                section.rows.push(Row {
                    location,
                    field,
                    type_cell: row.get(1).cloned().unwrap_or_default(),
                    line: k + 1,
                });
            }
        }
        label = None;
        i = table_end;
    }
    if !paragraph.is_empty() {
        section.paragraphs.push(paragraph);
    }
    if section.rows.is_empty() {
        errors.push(format!(
            "{}: the Configuration section has no `field` table",
            f.readme
        ));
    }
    section
}

/// The object (or list of objects) at field `field` of `location`, with its fields.
fn nested_object(parse: Parse, location: &str, field: &str) -> Option<String> {
    let object = join(location, field);
    let list = format!("{object}[]");
    [object, list]
        .into_iter()
        .find(|candidate| accepted_fields(parse, candidate).is_ok())
}

/// Compares a README's configuration reference with what the filter accepts.
fn check_readme(f: &FilterReadme, errors: &mut Vec<String>) {
    let section = config_section(f, errors);
    let mut visited = BTreeSet::new();
    let mut queue = vec![String::new()];
    while let Some(location) = queue.pop() {
        let accepted = match accepted_fields(f.parse, &location) {
            Ok(fields) => fields,
            Err(why) => {
                errors.push(format!(
                    "{}: `{}` should refuse unknown fields (`#[serde(deny_unknown_fields)]`), \
                     but {why}",
                    f.readme,
                    shown(&location)
                ));
                continue;
            }
        };
        visited.insert(location.clone());
        let declared = f.elsewhere.iter().find(|(l, _)| *l == location);
        if declared.is_some() && section.documented.contains_key(&location) {
            errors.push(format!(
                "{}: `{location}` has rows of its own and a `Doc` in tidy.rs: keep one",
                f.readme
            ));
        }
        let (documented, recurse) = match declared.map(|(_, doc)| *doc) {
            None => match section.documented.get(&location) {
                Some(fields) => (fields.clone(), true),
                None => {
                    let how = if location.is_empty() {
                        "add a `field` table".to_string()
                    } else {
                        format!("add rows `{location}.<field>`, a table, or a `Doc` in tidy.rs")
                    };
                    errors.push(format!(
                        "{}: `{}` is an object with fields {}, documented nowhere: {how}",
                        f.readme,
                        shown(&location),
                        list(&accepted),
                    ));
                    continue;
                }
            },
            Some(Doc::TypeCell) => {
                let (parent, field) = location.rsplit_once('.').unwrap_or(("", &location));
                let field = field.trim_end_matches("[]");
                match section
                    .rows
                    .iter()
                    .find(|r| r.location == parent && r.field == field)
                {
                    Some(row) => (names_in(&row.type_cell), true),
                    None => {
                        errors.push(format!(
                            "{}: no row for `{location}`, whose type cell should list its fields",
                            f.readme
                        ));
                        continue;
                    }
                }
            }
            Some(Doc::Term(term)) => {
                let bold = format!("**{term}**");
                let sentence = section.paragraphs.iter().find_map(|p| {
                    let from = p.find(&bold)?;
                    let rest = &p[from..];
                    Some(rest.find(". ").map_or(rest, |end| &rest[..end]).to_string())
                });
                match sentence {
                    Some(s) => (names_in(&s), true),
                    None => {
                        errors.push(format!(
                            "{}: no sentence defining {bold} (for `{location}`)",
                            f.readme
                        ));
                        continue;
                    }
                }
            }
            Some(Doc::SameAs(readme, other)) => match accepted_fields(other, "") {
                Ok(fields) => {
                    if fields != accepted {
                        errors.push(format!(
                            "{}: `{location}` should take exactly {readme}'s configuration, \
                             which accepts {}; it accepts {}",
                            f.readme,
                            list(&fields),
                            list(&accepted)
                        ));
                    }
                    // That README's own check covers the rest.
                    (accepted.clone(), false)
                }
                Err(why) => {
                    errors.push(format!("{readme}: {why}"));
                    continue;
                }
            },
        };
        let missing: BTreeSet<_> = accepted.difference(&documented).cloned().collect();
        let extra: BTreeSet<_> = documented.difference(&accepted).cloned().collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{}: `{}` accepts {} which the README does not document",
                f.readme,
                shown(&location),
                list(&missing)
            ));
        }
        if !extra.is_empty() {
            let lines: Vec<String> = section
                .rows
                .iter()
                .filter(|r| r.location == location && extra.contains(&r.field))
                .map(|r| r.line.to_string())
                .collect();
            errors.push(format!(
                "{}: `{}` does not accept {} which the README documents (lines: {})",
                f.readme,
                shown(&location),
                list(&extra),
                if lines.is_empty() {
                    "-".to_string()
                } else {
                    lines.join(", ")
                }
            ));
        }
        if recurse {
            for field in &accepted {
                if let Some(child) = nested_object(f.parse, &location, field) {
                    queue.push(child);
                }
            }
        }
    }
    for location in section.documented.keys() {
        if !visited.contains(location) {
            errors.push(format!(
                "{}: documents fields of `{}`, which the configuration does not take as an \
                 object that refuses unknown fields",
                f.readme,
                shown(location)
            ));
        }
    }
    for (location, _) in f.elsewhere {
        if !visited.contains(*location) {
            errors.push(format!(
                "tidy.rs: `{location}` of {} has a `Doc` but was not reached: its parent is \
                 undocumented, or it is not an object of the configuration",
                f.readme
            ));
        }
    }
}

fn list(fields: &BTreeSet<String>) -> String {
    let names: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    if names.is_empty() {
        "no fields".to_string()
    } else {
        names.join(", ")
    }
}

/// `filters/*/README.md`, and `examples/*/README.md` with a Configuration section.
fn readmes_on_disk() -> Vec<String> {
    let root = workspace_root();
    let mut out = Vec::new();
    for dir in ["filters", "examples"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{dir}/{name}/README.md");
            let text = fs::read_to_string(root.join(&rel)).unwrap_or_default();
            let is_filter = dir == "filters" && entry.path().join("Cargo.toml").is_file();
            if is_filter || text.lines().any(|l| l.trim() == "## Configuration") {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn readme_configuration_tables_match_the_config_types() {
    let declared = readmes();
    let mut errors = Vec::new();
    for rel in readmes_on_disk() {
        if !declared.iter().any(|f| f.readme == rel) {
            errors.push(format!(
                "{rel}: not checked; add it to `readmes()` in tidy.rs with its filter"
            ));
        }
    }
    for f in &declared {
        if !workspace_root().join(f.readme).is_file() {
            errors.push(format!("{}: declared in tidy.rs but missing", f.readme));
            continue;
        }
        check_readme(f, &mut errors);
    }
    report(
        "filter READMEs must document exactly the configuration fields the code accepts",
        &errors,
    );
}

#[test]
fn the_probe_reads_serde_field_lists() {
    assert_eq!(
        document_at("rules[].match.headers[]", "{}".into()),
        r#"{"rules":[{"match":{"headers":[{}]}}]}"#
    );
    let fields = accepted_fields(parse::<add_headers::AddHeaders>, "").unwrap();
    assert_eq!(
        list(&fields),
        "`request_headers`, `response_headers`",
        "{fields:?}"
    );
    // A map of strings is not an object with fields.
    assert!(accepted_fields(parse::<add_headers::AddHeaders>, "request_headers").is_err());
    assert_eq!(
        names_in(r#"object with optional `service`, `zone` (`"x"`), `{"name": "x-a", "v": 1}`"#),
        ["name", "service", "v", "zone"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

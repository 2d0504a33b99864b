//! Configurations derived from others, so that what they share cannot drift: each one-module
//! sidecar (one `mesh_sidecar` wasm filter per listener, filters/mesh-sidecar) is generated from
//! its three-module original by `cargo xtask derive-configs`, and a test fails while a committed
//! one differs from what its original gives ([`DERIVED`] lists them).
//!
//! The transformation works on text, so a derived file keeps its original's layout and comments:
//! - the original's opening comment block (its lines up to the first one that is not a comment)
//!   describes the original: the derived file opens with a "generated, do not edit" notice and
//!   its own [`Derived::intro`] instead;
//! - the lines between a [`BEGIN`] and an [`END`] marker line (list items of an `http_filters`)
//!   are some of the trace_propagation, service_metrics and route_retries wasm filters, in that
//!   order; they become one `mesh_sidecar` filter ([`one_module`] says how each field combines)
//!   and the markers go;
//! - every other line is copied as it is, placeholders (`{{PORT_ADMIN}}`, `{{FILTERS_DIR}}`...)
//!   included.
//!
//! Both files are then parsed as YAML and must be equal but for those wasm filters, so a layout
//! the text step does not understand is an error, never a silently different configuration.

use std::fs;
use std::path::Path;

use serde_norway::Value;

/// The command that (re)writes every derived file.
pub const COMMAND: &str = "cargo xtask derive-configs";

/// The line (indented as the filter list's items; anything may follow) that opens a block of
/// filters to combine into one `mesh_sidecar` filter.
pub const BEGIN: &str = "# derive-configs: begin mesh_sidecar";

/// The line that closes such a block.
pub const END: &str = "# derive-configs: end mesh_sidecar";

/// What every marker line starts with: a line that does but is neither [`BEGIN`] nor [`END`] is
/// an error (a typo must not turn a marker into a plain comment).
const MARKER: &str = "# derive-configs:";

/// The combined module's plugin name, root id and `.wasm` file name.
pub const MODULE: &str = "mesh_sidecar";

/// The three filters a block may hold, each with its section of the combined configuration, in
/// the order `mesh_sidecar` runs them.
pub const POLICIES: [(&str, &str); 3] = [
    ("trace_propagation", "trace"),
    ("service_metrics", "metrics"),
    ("route_retries", "retries"),
];

/// The Envoy filter name of a wasm filter.
const WASM_FILTER: &str = "envoy.filters.http.wasm";

/// One derived file: paths relative to the workspace root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derived {
    /// The three-module original, the file to edit.
    pub source: &'static str,
    /// The generated one-module file.
    pub derived: &'static str,
    /// The derived file's own opening comment (complete `#` lines), after the notice.
    pub intro: &'static str,
}

/// Every derived file.
pub const DERIVED: [Derived; 2] = [
    Derived {
        source: "envoy-configs/sidecar.yaml",
        derived: "envoy-configs/sidecar-one-module.yaml",
        intro: "\
# The mesh sidecar of sidecar.yaml with the three meshwasm policies in one module
# (filters/mesh-sidecar/README.md): on each listener one `mesh_sidecar` wasm filter in place of
# sidecar.yaml's trace_propagation, service_metrics and route_retries filters, so one VM per
# worker thread instead of three and one context per request. Its configuration holds those
# filters' configurations, one section each (`trace`, `metrics`, `retries`); its VM has their
# environment variables. Its failure policy is the one they share: a failed VM lets requests
# through with none of the policies (with three modules, only the failed one is skipped).
# Everything else (listeners, routes, clusters, EDS, stats tags, command line, environment) is
# sidecar.yaml's, and so is what its opening comment says about them. This is the sidecar to
# deploy by default and the one `cargo xtask demo` runs: the cheaper layout
# (envoy-configs/README.md, \"Which sidecar to deploy\").
",
    },
    Derived {
        source: "integration/configs/all_filters.yaml",
        derived: "integration/configs/mesh_sidecar.yaml",
        intro: "\
# The sidecar of all_filters.yaml with the three policies in one module (filters/mesh-sidecar):
# on each listener one `mesh_sidecar` wasm filter in place of the three, whose configuration is
# {\"trace\": ..., \"metrics\": ..., \"retries\": ...} made of the same six filter configurations
# (the same placeholders, in one single-quoted YAML scalar per listener) and whose failure policy
# is the same placeholder. Everything else (listeners, routes, clusters, node) is the same, so
# the reliability tests run on either; all_filters.yaml's opening comment says what they are.
",
    },
];

impl Derived {
    /// The derived file's text, from its original's text.
    pub fn render(&self, source: &str) -> Result<String, String> {
        let name = self.source.rsplit('/').next().unwrap_or(self.source);
        let body = one_module(source, name)?;
        Ok(format!(
            "# Generated from {} by `{COMMAND}`: do not edit.\n\
             # Edit that file and run the command; integration/tests/configs.rs fails until then.\n\
             #\n{}{body}",
            self.source, self.intro
        ))
    }

    /// What the derived file must hold: its original, read under `root`, rendered.
    pub fn expected(&self, root: &Path) -> Result<String, String> {
        let path = root.join(self.source);
        let source = fs::read_to_string(&path)
            .map_err(|e| format!("could not read {}: {e}", path.display()))?;
        self.render(&source)
            .map_err(|e| format!("{}: {e}", self.source))
    }

    /// Whether the derived file under `root` is missing or differs from [`Derived::expected`].
    pub fn is_stale(&self, root: &Path) -> Result<bool, String> {
        let expected = self.expected(root)?;
        let current = fs::read_to_string(root.join(self.derived)).ok();
        Ok(current.as_deref() != Some(expected.as_str()))
    }
}

/// The derived files under the workspace root `root` that are missing or stale.
pub fn stale(root: &Path) -> Result<Vec<Derived>, String> {
    let mut out = Vec::new();
    for d in DERIVED {
        if d.is_stale(root)? {
            out.push(d);
        }
    }
    Ok(out)
}

/// (Re)writes every derived file under the workspace root `root` that is missing or stale;
/// returns those it wrote. Every original is rendered before anything is written.
pub fn write(root: &Path) -> Result<Vec<Derived>, String> {
    let mut pending = Vec::new();
    for d in DERIVED {
        let expected = d.expected(root)?;
        let path = root.join(d.derived);
        if fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            pending.push((d, path, expected));
        }
    }
    let mut written = Vec::new();
    for (d, path, text) in pending {
        fs::write(&path, text).map_err(|e| format!("could not write {}: {e}", path.display()))?;
        written.push(d);
    }
    Ok(written)
}

/// The one-module body of a three-module config text (`source_name` names it in comments and
/// errors): without its opening comment block, each marked block of filters combined into one
/// `mesh_sidecar` filter, every other line as it is.
///
/// How the filters of a block combine (anything else is an error that names the line):
/// - `name` is the wasm filter's for each; `typed_config` and everything under it that is not
///   listed here must be written the same way in each filter;
/// - `config.name` and `config.root_id` become `mesh_sidecar`; the root ids say which policy
///   each filter is, and they must come in `mesh_sidecar`'s order (trace, metrics, retries),
///   each at most once;
/// - `configuration.value` (a single-quoted scalar in each) becomes
///   `{"trace":<its value>,"metrics":...,"retries":...}` with the values as written, so a
///   placeholder stays a placeholder;
/// - `vm_config.vm_id`: the filters' vm ids must share what follows their first `_`
///   (`trace_outbound`, `metrics_outbound`), which the combined `mesh_<that>` keeps;
///   `vm_config.code` must be the same with each file name's `<root_id>.wasm` read as
///   `mesh_sidecar.wasm`; any other `vm_config` field (e.g. `environment_variables`) that any
///   filter sets is set, and must be the same in each filter that sets it;
/// - the comments inside the filters are kept above the combined `configuration`, each under
///   its section's name.
pub fn one_module(source: &str, source_name: &str) -> Result<String, String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut blocks = 0;
    let mut combined = 0;
    let mut i = lines.iter().take_while(|l| l.starts_with('#')).count();
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if !trimmed.starts_with(MARKER) {
            out.push(line.to_string());
            i += 1;
            continue;
        }
        if !trimmed.starts_with(BEGIN) {
            return Err(format!(
                "line {}: `{trimmed}`: expected a `{BEGIN}` line here",
                i + 1
            ));
        }
        let indent = indent_of(line);
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim_start().starts_with(MARKER))
            .ok_or_else(|| format!("line {}: `{BEGIN}` without `{END}`", i + 1))?;
        if !lines[end].trim_start().starts_with(END) || indent_of(lines[end]) != indent {
            return Err(format!(
                "line {}: expected `{END}`, indented as its `{BEGIN}` on line {}",
                end + 1,
                i + 1
            ));
        }
        let numbered: Vec<(usize, &str)> = (start..end).map(|j| (j + 1, lines[j])).collect();
        let (block, members) = combine(&numbered, indent, source_name)
            .map_err(|e| format!("the block of line {}: {e}", i + 1))?;
        out.extend(block);
        blocks += 1;
        combined += members;
        i = end + 1;
    }
    let mut text = out.join("\n");
    if source.ends_with('\n') {
        text.push('\n');
    }
    only_the_filters_differ(source, &text, blocks, combined)?;
    Ok(text)
}

/// A line's indentation in spaces.
fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// One line of YAML, read as much as the combination needs, with the lines nested under it.
#[derive(Debug)]
struct Node {
    /// 1-based line number in the original.
    line_no: usize,
    /// Indentation in spaces.
    indent: usize,
    /// `key` of a `key: value` line (quotes kept), none for other lines (`- x`, continuations).
    key: Option<String>,
    /// What follows `key:`, trimmed.
    value: String,
    /// This line and every line under it, as written (comments left out).
    text: Vec<String>,
    /// The lines nested under this one.
    children: Vec<Node>,
}

impl Node {
    /// A block mapping: nothing after `key:` and only `key: value` lines under it.
    fn is_mapping(&self) -> bool {
        self.value.is_empty()
            && !self.children.is_empty()
            && self.children.iter().all(|c| c.key.is_some())
    }

    /// The value as a plain scalar: an unquoted one without its trailing comment, or a quoted
    /// one without its quotes.
    fn scalar(&self) -> String {
        let v = self.value.as_str();
        if let Some(inner) = single_quoted(v) {
            return inner;
        }
        if let Some(inner) = v.strip_prefix('"').and_then(|r| r.split('"').next()) {
            return inner.to_string();
        }
        v.split(" #").next().unwrap_or(v).trim().to_string()
    }
}

/// `key` and value of a `key: value` (or `key:`) line, trimmed; none for other lines.
fn split_key(trimmed: &str) -> Option<(String, String)> {
    if trimmed.starts_with("- ") || trimmed == "-" {
        return None;
    }
    let key_end = if let Some(rest) = trimmed.strip_prefix('"') {
        rest.find('"')? + 2
    } else if let Some(rest) = trimmed.strip_prefix('\'') {
        rest.find('\'')? + 2
    } else {
        let colon = trimmed
            .char_indices()
            .find(|&(i, c)| {
                c == ':' && matches!(trimmed[i + 1..].chars().next(), None | Some(' '))
            })?
            .0;
        let key = &trimmed[..colon];
        if key.is_empty() || key.contains([' ', '{', '}', '[', ']', ',', '#', '&', '*', '!']) {
            return None;
        }
        colon
    };
    let rest = trimmed[key_end..].strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((trimmed[..key_end].to_string(), rest.trim().to_string()))
}

/// The text of a single-quoted YAML scalar (`'it''s'` -> `it's`) that is the whole of `v` but a
/// trailing comment; none if `v` is not one.
fn single_quoted(v: &str) -> Option<String> {
    let rest = v.strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            out.push(c);
        } else if chars.peek().map(|&(_, n)| n) == Some('\'') {
            out.push('\'');
            chars.next();
        } else {
            let after = rest[i + 1..].trim();
            return (after.is_empty() || after.starts_with('#')).then_some(out);
        }
    }
    None
}

/// Parses lines (no comments, no blank lines, the first one the least indented) into nodes.
fn parse_nodes(lines: &[(usize, String)]) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    let Some((_, first)) = lines.first() else {
        return Ok(nodes);
    };
    let indent = indent_of(first);
    let mut i = 0;
    while i < lines.len() {
        let (line_no, line) = &lines[i];
        if indent_of(line) != indent {
            return Err(format!(
                "line {line_no}: indented by {}, where {indent} was expected",
                indent_of(line)
            ));
        }
        let (key, value) = match split_key(line.trim()) {
            Some((k, v)) => (Some(k), v),
            None => (None, line.trim().to_string()),
        };
        // Under it: deeper lines, and for `key:` a sequence written at the key's indentation.
        let own_sequence = key.is_some() && value.is_empty();
        let mut j = i + 1;
        while j < lines.len() {
            let l = &lines[j].1;
            let deeper = indent_of(l) > indent;
            let sequence_item = indent_of(l) == indent && l.trim_start().starts_with("- ");
            if deeper || (own_sequence && sequence_item) {
                j += 1;
            } else {
                break;
            }
        }
        nodes.push(Node {
            line_no: *line_no,
            indent,
            key,
            value,
            text: lines[i..j].iter().map(|(_, l)| l.clone()).collect(),
            children: parse_nodes(&lines[i + 1..j])?,
        });
        i = j;
    }
    Ok(nodes)
}

/// One list item of a block, as read.
struct Item {
    /// Its first line's number.
    line_no: usize,
    /// Its lines but comments, numbered, the first one read as a field (`- ` as two spaces).
    lines: Vec<(usize, String)>,
    /// Its comment lines, without `#` and one space.
    comments: Vec<String>,
}

/// One filter of a block.
struct Member {
    /// Index into [`POLICIES`].
    policy: usize,
    /// Its fields (the list item's mapping).
    fields: Vec<Node>,
    /// Its comment lines, without `#` and one space.
    comments: Vec<String>,
}

impl Member {
    fn root_id(&self) -> &'static str {
        POLICIES[self.policy].0
    }

    fn section(&self) -> &'static str {
        POLICIES[self.policy].1
    }
}

/// The node at `path` (keys) under `fields`.
fn find<'a>(fields: &'a [Node], path: &[&str]) -> Option<&'a Node> {
    let (first, rest) = path.split_first()?;
    let node = fields.iter().find(|n| n.key.as_deref() == Some(*first))?;
    if rest.is_empty() {
        Some(node)
    } else {
        find(&node.children, rest)
    }
}

/// The lines of one combined filter for the lines of a marked block (`indent`: the markers').
/// Returns the lines and how many filters the block held.
fn combine(
    block: &[(usize, &str)],
    indent: usize,
    source_name: &str,
) -> Result<(Vec<String>, usize), String> {
    // Split the block into list items; comments before the first item stay above the result.
    let mut leading_comments: Vec<String> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    for &(line_no, line) in block {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') {
            match items.last_mut() {
                Some(item) => {
                    let text = trimmed.trim_start_matches('#');
                    let text = text.strip_prefix(' ').unwrap_or(text);
                    item.comments.push(text.to_string());
                }
                None => leading_comments.push(line.to_string()),
            }
            continue;
        }
        let item_start = indent_of(line) == indent && trimmed.starts_with("- ");
        if item_start {
            // `- name: x` is read as `  name: x`, a field of the item's mapping.
            let as_field = format!("{}  {}", " ".repeat(indent), &trimmed[2..]);
            items.push(Item {
                line_no,
                lines: vec![(line_no, as_field)],
                comments: Vec::new(),
            });
        } else if indent_of(line) > indent {
            match items.last_mut() {
                Some(item) => item.lines.push((line_no, line.to_string())),
                None => {
                    return Err(format!(
                        "line {line_no}: expected a list item (`- name: ...`)"
                    ))
                }
            }
        } else {
            return Err(format!(
                "line {line_no}: expected a list item indented as the markers"
            ));
        }
    }

    let mut members: Vec<Member> = Vec::new();
    for Item {
        line_no,
        lines,
        comments,
    } in items
    {
        let fields = parse_nodes(&lines)?;
        let name = find(&fields, &["name"]).map(Node::scalar);
        if name.as_deref() != Some(WASM_FILTER) {
            return Err(format!(
                "line {line_no}: only `{WASM_FILTER}` filters can be combined, not {name:?}"
            ));
        }
        let root_id = find(&fields, &["typed_config", "config", "root_id"])
            .map(Node::scalar)
            .ok_or_else(|| format!("line {line_no}: a wasm filter without `config.root_id`"))?;
        let policy = POLICIES
            .iter()
            .position(|(id, _)| *id == root_id)
            .ok_or_else(|| {
                format!("line {line_no}: root_id `{root_id}` is none of trace_propagation, service_metrics, route_retries")
            })?;
        if let Some(last) = members.last() {
            if last.policy >= policy {
                return Err(format!(
                    "line {line_no}: {root_id} after {}: {MODULE} runs trace_propagation, \
                     service_metrics, route_retries in that order, each once",
                    last.root_id()
                ));
            }
        }
        members.push(Member {
            policy,
            fields,
            comments,
        });
    }
    if members.is_empty() {
        return Err("no filters between the markers".to_string());
    }

    let mut out = leading_comments;
    let mut fields = merge(&members, &[], source_name)?;
    if let Some(first) = fields.first_mut() {
        let rest = first.get(indent + 2..).unwrap_or_default().to_string();
        *first = format!("{}- {rest}", " ".repeat(indent));
    }
    out.append(&mut fields);
    Ok((out, members.len()))
}

/// The keys of the mappings at `path` in every member, in an order that keeps each member's.
fn merged_keys(members: &[Member], path: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for m in members {
        let fields = if path.is_empty() {
            Some(&m.fields)
        } else {
            find(&m.fields, path).map(|n| &n.children)
        };
        let own: Vec<&str> = fields
            .into_iter()
            .flatten()
            .filter_map(|n| n.key.as_deref())
            .collect();
        for (i, key) in own.iter().enumerate() {
            if keys.iter().any(|k| k == key) {
                continue;
            }
            // Before the first of this member's later keys that is already placed.
            let at = own[i + 1..]
                .iter()
                .find_map(|next| keys.iter().position(|k| k == next))
                .unwrap_or(keys.len());
            keys.insert(at, (*key).to_string());
        }
    }
    keys
}

/// The combined lines of the mapping at `path` (keys below the list item).
fn merge(members: &[Member], path: &[&str], source_name: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let in_vm_config = path.get(2) == Some(&"vm_config");
    for key in merged_keys(members, path) {
        let mut full: Vec<&str> = path.to_vec();
        full.push(&key);
        let nodes: Vec<(&Member, &Node)> = members
            .iter()
            .filter_map(|m| find(&m.fields, &full).map(|n| (m, n)))
            .collect();
        let Some(&(_, first)) = nodes.first() else {
            continue;
        };
        let at = format!("`{}` (line {})", full.join("."), first.line_no);
        if nodes.len() != members.len() && !in_vm_config {
            let without: Vec<&str> = members
                .iter()
                .filter(|m| find(&m.fields, &full).is_none())
                .map(Member::root_id)
                .collect();
            return Err(format!(
                "{at} is set on some filters but not on {}: the one module has one for all",
                without.join(", ")
            ));
        }
        let pad = " ".repeat(first.indent);
        match full.as_slice() {
            ["typed_config", "config", "name" | "root_id"] => {
                out.push(format!("{pad}{key}: {MODULE}"));
            }
            ["typed_config", "config", "configuration", "value"] => {
                out.push(format!("{pad}value: '{}'", combined_value(&nodes, &at)?));
            }
            ["typed_config", "config", "vm_config", "vm_id"] => {
                if nodes.len() != members.len() {
                    return Err(format!("{at} is set on some filters only"));
                }
                out.push(format!("{pad}vm_id: {}", combined_vm_id(&nodes, &at)?));
            }
            _ => {
                if full.as_slice() == ["typed_config", "config", "configuration"] {
                    out.extend(comments(members, &pad, source_name));
                }
                let renamed = |m: &Member, n: &Node| -> Result<Vec<String>, String> {
                    if full.as_slice() != ["typed_config", "config", "vm_config", "code"] {
                        return Ok(n.text.clone());
                    }
                    let file = format!("{}.wasm", m.root_id());
                    if !n.text.iter().any(|l| l.contains(&file)) {
                        return Err(format!("{at}: {}'s code does not name {file}", m.root_id()));
                    }
                    let module = format!("{MODULE}.wasm");
                    Ok(n.text.iter().map(|l| l.replace(&file, &module)).collect())
                };
                if nodes.iter().all(|(_, n)| n.is_mapping())
                    && full.as_slice() != ["typed_config", "config", "vm_config", "code"]
                {
                    let heads: Vec<&String> =
                        nodes.iter().filter_map(|(_, n)| n.text.first()).collect();
                    if heads.windows(2).any(|w| w[0] != w[1]) {
                        return Err(format!("{at} is written differently in the filters"));
                    }
                    out.push(heads[0].clone());
                    out.extend(merge(members, &full, source_name)?);
                } else {
                    let texts = nodes
                        .iter()
                        .map(|(m, n)| renamed(m, n))
                        .collect::<Result<Vec<_>, _>>()?;
                    if let Some(i) = texts.iter().position(|t| *t != texts[0]) {
                        return Err(format!(
                            "{at}: {} and {} differ ({:?} / {:?}): the one module has one",
                            nodes[0].0.root_id(),
                            nodes[i].0.root_id(),
                            texts[0].join(" "),
                            texts[i].join(" ")
                        ));
                    }
                    out.extend(texts[0].iter().cloned());
                }
            }
        }
    }
    Ok(out)
}

/// `{"trace":...,"metrics":...,"retries":...}` of the members' `configuration.value`s.
fn combined_value(nodes: &[(&Member, &Node)], at: &str) -> Result<String, String> {
    let mut sections = Vec::new();
    for (m, n) in nodes {
        let json = single_quoted(&n.value).ok_or_else(|| {
            format!(
                "{at}: {}'s value must be a single-quoted scalar on one line",
                m.root_id()
            )
        })?;
        if !json.contains("{{") {
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(&json);
            if !parsed.as_ref().is_ok_and(serde_json::Value::is_object) {
                return Err(format!(
                    "{at}: {}'s configuration is not a JSON object",
                    m.root_id()
                ));
            }
        }
        sections.push(format!("\"{}\":{json}", m.section()));
    }
    Ok(format!("{{{}}}", sections.join(",")).replace('\'', "''"))
}

/// `mesh_<suffix>` of the members' vm ids `<name>_<suffix>`.
fn combined_vm_id(nodes: &[(&Member, &Node)], at: &str) -> Result<String, String> {
    let mut suffix: Option<String> = None;
    for (m, n) in nodes {
        let id = n.scalar();
        let Some((_, s)) = id.split_once('_') else {
            return Err(format!("{at}: {}'s vm_id `{id}` has no `_`", m.root_id()));
        };
        match &suffix {
            Some(other) if other != s => {
                return Err(format!(
                    "{at}: the vm ids end differently (`_{other}`, `_{s}`), so the combined one \
                     cannot be named after them"
                ));
            }
            _ => suffix = Some(s.to_string()),
        }
    }
    Ok(format!("mesh_{}", suffix.unwrap_or_default()))
}

/// The comment lines above the combined `configuration`.
fn comments(members: &[Member], pad: &str, source_name: &str) -> Vec<String> {
    let sections: Vec<&str> = members.iter().map(Member::section).collect();
    let mut out = vec![format!(
        "{pad}# One section per filter of {source_name}: {}.",
        sections.join(", ")
    )];
    for m in members.iter().filter(|m| !m.comments.is_empty()) {
        out.push(format!("{pad}# {}:", m.section()));
        for c in &m.comments {
            if c.is_empty() {
                out.push(format!("{pad}#"));
            } else {
                out.push(format!("{pad}#   {c}"));
            }
        }
    }
    out
}

/// Checks that `source` and `derived` parse as YAML and are the same but for the wasm filters
/// of the policies and of the module: `blocks` `mesh_sidecar` filters in `derived`, none of
/// the three left there, and `combined` of the three in `source` (none outside the markers).
fn only_the_filters_differ(
    source: &str,
    derived: &str,
    blocks: usize,
    combined: usize,
) -> Result<(), String> {
    let mut ids: Vec<&str> = POLICIES.iter().map(|(id, _)| *id).collect();
    ids.push(MODULE);
    let (source_rest, source_counts) = without_filters(parse_template(source)?, &ids);
    let (derived_rest, derived_counts) = without_filters(parse_template(derived)?, &ids);
    let three = |counts: &[usize]| counts[..POLICIES.len()].iter().sum::<usize>();
    if three(&source_counts) != combined {
        return Err(format!(
            "{} of the trace_propagation, service_metrics and route_retries filters are outside \
             `{BEGIN}` / `{END}` markers: mark them, or say how the one module should do without",
            three(&source_counts) - combined.min(three(&source_counts))
        ));
    }
    if three(&derived_counts) != 0 || derived_counts[POLICIES.len()] != blocks {
        return Err(format!(
            "the result has {} of the three filters and {} {MODULE} filters for {blocks} blocks: \
             a layout the generator misread",
            three(&derived_counts),
            derived_counts[POLICIES.len()]
        ));
    }
    match first_difference(&source_rest, &derived_rest, "") {
        None => Ok(()),
        Some(path) => Err(format!(
            "the result differs from the original at `{path}`, not only in the wasm filters: a \
             layout the generator misread"
        )),
    }
}

/// `template` parsed as YAML, each `{{NAME}}` read as the plain word `__placeholder_NAME__`.
fn parse_template(template: &str) -> Result<Value, String> {
    let mut text = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        text.push_str(&format!("__placeholder_{}__", after[..end].trim()));
        rest = &after[end + 2..];
    }
    text.push_str(rest);
    serde_norway::from_str(&text).map_err(|e| format!("not YAML: {e}"))
}

/// `value` without the sequence items that are wasm filters with one of `root_ids`, and how many
/// of each it removed.
fn without_filters(value: Value, root_ids: &[&str]) -> (Value, Vec<usize>) {
    let mut counts = vec![0; root_ids.len()];
    let value = strip(value, root_ids, &mut counts);
    (value, counts)
}

/// [`without_filters`]' walk: `counts[i]` counts the filters of `root_ids[i]` it removed.
fn strip(value: Value, root_ids: &[&str], counts: &mut [usize]) -> Value {
    match value {
        Value::Sequence(items) => {
            let mut kept = Vec::with_capacity(items.len());
            for item in items {
                let is_wasm = item.get("name").and_then(Value::as_str) == Some(WASM_FILTER);
                let root = item
                    .get("typed_config")
                    .and_then(|t| t.get("config"))
                    .and_then(|c| c.get("root_id"))
                    .and_then(Value::as_str);
                match root.and_then(|r| root_ids.iter().position(|id| *id == r)) {
                    Some(i) if is_wasm => counts[i] += 1,
                    _ => kept.push(strip(item, root_ids, counts)),
                }
            }
            Value::Sequence(kept)
        }
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| (k, strip(v, root_ids, counts)))
                .collect(),
        ),
        other => other,
    }
}

/// The path of the first place where `a` and `b` differ, if they do.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            for (k, v) in x {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                let here = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                match y.get(k) {
                    Some(w) => {
                        if let Some(p) = first_difference(v, w, &here) {
                            return Some(p);
                        }
                    }
                    None => return Some(here),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{}", k.as_str().unwrap_or("?")))
        }
        (Value::Sequence(x), Value::Sequence(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if let Some(p) = first_difference(v, w, &format!("{path}[{i}]")) {
                    return Some(p);
                }
            }
            (x.len() != y.len()).then(|| format!("{path}[{}]", x.len().min(y.len())))
        }
        _ => (a != b).then(|| path.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A listener's http_filters with the given filters between markers.
    fn listener(filters: &str) -> String {
        format!(
            "# The original's own header.\n# Second line.\n\n\
             # A comment that stays.\nnode: {{ id: x, cluster: y }}\nstatic_resources:\n  listeners:\n  \
             - name: outbound\n    address:\n      socket_address: {{ address: 127.0.0.1, port_value: {{{{PORT_A}}}} }}\n    \
             filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        \
             typed_config:\n          stat_prefix: outbound\n          http_filters:\n          \
             {BEGIN}\n{filters}          {END}\n          - name: envoy.filters.http.router\n"
        )
    }

    fn wasm(root_id: &str, vm_id: &str, value: &str, extra_vm: &str, comment: &str) -> String {
        let p = "          ";
        format!(
            "{p}- name: envoy.filters.http.wasm\n\
             {p}  typed_config:\n\
             {p}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n\
             {p}    config:\n\
             {p}      name: {root_id}\n\
             {p}      root_id: {root_id}\n\
             {p}      failure_policy: {{{{FAILURE_POLICY}}}}\n\
             {comment}\
             {p}      configuration:\n\
             {p}        \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
             {p}        value: '{value}'\n\
             {p}      vm_config:\n\
             {p}        vm_id: {vm_id}\n\
             {p}        runtime: envoy.wasm.runtime.v8\n\
             {extra_vm}\
             {p}        code: {{ local: {{ filename: '{{{{FILTERS_DIR}}}}/{root_id}.wasm' }} }}\n"
        )
    }

    const ENV: &str =
        "                  environment_variables: { host_env_keys: [MESH_VERSION] }\n";

    fn three() -> String {
        wasm("trace_propagation", "trace_outbound", "{{TRACE}}", "", "")
            + &wasm(
                "service_metrics",
                "metrics_outbound",
                r#"{"reporter":"source","x":"it''s"}"#,
                ENV,
                "                # Sign where the network is not trusted.\n                #\n                # Second paragraph.\n",
            )
            + &wasm("route_retries", "retries_outbound", "{}", "", "")
    }

    #[test]
    fn combines_a_block_into_one_filter_and_keeps_the_rest() {
        let source = listener(&three());
        let out = one_module(&source, "orig.yaml").unwrap();
        let expected_filter = r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: mesh_sidecar
                root_id: mesh_sidecar
                failure_policy: {{FAILURE_POLICY}}
                # One section per filter of orig.yaml: trace, metrics, retries.
                # metrics:
                #   Sign where the network is not trusted.
                #
                #   Second paragraph.
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"trace":{{TRACE}},"metrics":{"reporter":"source","x":"it''s"},"retries":{}}'
                vm_config:
                  vm_id: mesh_outbound
                  runtime: envoy.wasm.runtime.v8
                  environment_variables: { host_env_keys: [MESH_VERSION] }
                  code: { local: { filename: '{{FILTERS_DIR}}/mesh_sidecar.wasm' } }
          - name: envoy.filters.http.router
"#;
        assert!(out.ends_with(expected_filter), "{out}");
        // The header goes, the rest stays, the markers go.
        assert!(out.starts_with("\n# A comment that stays.\nnode:"), "{out}");
        assert!(out.contains("port_value: {{PORT_A}} }"), "{out}");
        assert!(!out.contains("derive-configs"), "{out}");
    }

    #[test]
    fn a_subset_combines_too() {
        let two = wasm("trace_propagation", "trace_inbound", "{}", "", "")
            + &wasm("service_metrics", "metrics_inbound", "{}", ENV, "");
        let out = one_module(&listener(&two), "o.yaml").unwrap();
        assert!(
            out.contains(r#"value: '{"trace":{},"metrics":{}}'"#),
            "{out}"
        );
        assert!(out.contains("vm_id: mesh_inbound"), "{out}");
        assert!(out.contains("filter of o.yaml: trace, metrics.\n"), "{out}");
        assert_eq!(out.matches("name: envoy.filters.http.wasm").count(), 1);
    }

    #[test]
    fn refuses_what_one_module_cannot_hold() {
        let err = |filters: String| one_module(&listener(&filters), "o.yaml").unwrap_err();
        // Out of order.
        let swapped = wasm("service_metrics", "m_out", "{}", "", "")
            + &wasm("trace_propagation", "t_out", "{}", "", "");
        assert!(err(swapped).contains("in that order"));
        // Different failure policies.
        let policies = wasm("trace_propagation", "t_out", "{}", "", "")
            + &wasm("service_metrics", "m_out", "{}", "", "")
                .replace("{{FAILURE_POLICY}}", "FAIL_CLOSED");
        assert!(err(policies).contains("failure_policy"));
        // A field on one filter only (outside vm_config).
        let extra = wasm("trace_propagation", "t_out", "{}", "", "")
            + &wasm("service_metrics", "m_out", "{}", "", "").replace(
                "      configuration:\n",
                "      allow_precompiled: true\n                configuration:\n",
            );
        assert!(err(extra).contains("allow_precompiled"));
        // vm ids that do not share a suffix.
        let ids = wasm("trace_propagation", "t_out", "{}", "", "")
            + &wasm("service_metrics", "m_in", "{}", "", "");
        assert!(err(ids).contains("vm ids"));
        // Different environments.
        let envs = wasm("trace_propagation", "t_out", "{}", ENV, "")
            + &wasm(
                "service_metrics",
                "m_out",
                "{}",
                &ENV.replace("VERSION", "ZONE"),
                "",
            );
        assert!(err(envs).contains("environment_variables"));
        // A literal configuration that is not JSON.
        let bad = wasm("trace_propagation", "t_out", "{not json", "", "");
        assert!(err(bad).contains("not a JSON object"));
        // Another filter inside the markers.
        let lua = "          - name: envoy.filters.http.lua\n";
        assert!(err(lua.to_string()).contains("only"));
        // Empty block.
        assert!(err(String::new()).contains("no filters"));
    }

    #[test]
    fn refuses_filters_outside_markers_and_broken_markers() {
        let source = listener(&three());
        let unmarked = source
            .replace(&format!("          {BEGIN}\n"), "")
            .replace(&format!("          {END}\n"), "");
        assert!(one_module(&unmarked, "o").unwrap_err().contains("outside"));
        let unclosed = source.replace(&format!("          {END}\n"), "");
        assert!(one_module(&unclosed, "o").unwrap_err().contains("without"));
        let typo = source.replace(END, "# derive-configs: ned mesh_sidecar");
        assert!(one_module(&typo, "o").unwrap_err().contains("expected"));
    }

    #[test]
    fn reads_yaml_lines() {
        assert_eq!(
            split_key(r#""@type": type.googleapis.com/x"#),
            Some((
                r#""@type""#.to_string(),
                "type.googleapis.com/x".to_string()
            ))
        );
        assert_eq!(
            split_key("code: { local: { filename: x } }"),
            Some(("code".to_string(), "{ local: { filename: x } }".to_string()))
        );
        assert_eq!(
            split_key("vm_config:"),
            Some(("vm_config".into(), String::new()))
        );
        assert_eq!(split_key("- name: x"), None);
        assert_eq!(split_key("http://x:80"), None);
        assert_eq!(single_quoted("'a''b' # c").as_deref(), Some("a'b"));
        assert_eq!(single_quoted("'a' b"), None);
        assert_eq!(single_quoted("'a"), None);
    }

    #[test]
    fn the_derived_header_names_its_origin_and_command() {
        for d in DERIVED {
            assert!(d.intro.lines().all(|l| l.starts_with('#')), "{}", d.intro);
            assert!(
                d.intro.ends_with('\n') && !d.intro.contains("{{"),
                "{}",
                d.intro
            );
            let out = d.render(&listener(&three())).unwrap();
            let header: Vec<&str> = out.lines().take_while(|l| l.starts_with('#')).collect();
            assert!(
                header[0].contains(COMMAND) && header[0].contains(d.source),
                "{out}"
            );
            assert!(header[0].ends_with("do not edit."), "{out}");
            assert!(header.iter().all(|l| l.len() <= 100), "{header:#?}");
        }
    }

    /// The shipped originals derive (integration/tests/configs.rs checks the results are
    /// committed).
    #[test]
    fn the_workspace_originals_derive() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        if !root.join(DERIVED[0].source).is_file() {
            return; // not built in the workspace
        }
        for d in DERIVED {
            d.expected(root).unwrap();
        }
    }
}

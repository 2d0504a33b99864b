//! Trace trees for the demo's report: the spans of one trace (from the toolkit's collector)
//! arranged by parent, and rendered as indented text, one line per span.

use toolkit::collector::Span;

/// A span and its children, ordered by start time.
#[derive(Debug, Clone)]
pub struct TraceNode {
    /// The span.
    pub span: Span,
    /// Spans whose parent it is.
    pub children: Vec<TraceNode>,
}

impl TraceNode {
    /// Every span of the tree, depth first.
    pub fn walk(&self) -> Vec<&Span> {
        let mut out = vec![&self.span];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// The trees of one trace's spans: roots are spans whose parent is not among them.
pub fn build_trees(spans: &[Span]) -> Vec<TraceNode> {
    fn node(span: &Span, spans: &[Span], depth: usize) -> TraceNode {
        let mut children: Vec<TraceNode> = if depth > 64 {
            Vec::new()
        } else {
            spans
                .iter()
                .filter(|s| s.parent_id.as_deref() == Some(span.id.as_str()) && s.id != span.id)
                .map(|s| node(s, spans, depth + 1))
                .collect()
        };
        children.sort_by_key(|c| c.span.timestamp_us);
        TraceNode {
            span: span.clone(),
            children,
        }
    }
    let mut roots: Vec<TraceNode> = spans
        .iter()
        .filter(|s| match &s.parent_id {
            Some(p) => !spans.iter().any(|o| &o.id == p),
            None => true,
        })
        .map(|s| node(s, spans, 0))
        .collect();
    roots.sort_by_key(|r| r.span.timestamp_us);
    roots
}

/// The indented text of a tree: one line per span with service, kind, name (low-cardinality:
/// method and route), the `http.path` tag, status and duration.
pub fn render_tree(root: &TraceNode) -> String {
    fn line(n: &TraceNode, prefix: &str, last: bool, top: bool, out: &mut String) {
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let s = &n.span;
        let path = s
            .tags
            .get("http.path")
            .map(|p| format!(" {p}"))
            .unwrap_or_default();
        let to = s
            .tags
            .get("upstream_cluster")
            .filter(|_| s.kind == "CLIENT")
            .map(|c| format!(" -> {c}"))
            .unwrap_or_default();
        let flags = s
            .tags
            .get("response_flags")
            .filter(|f| f.as_str() != "-")
            .map(|f| format!(" [{f}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{prefix}{branch}{:<10} {:<6} {}{path}{to}  {} {:.2} ms{flags}\n",
            s.service,
            s.kind,
            s.name,
            s.status(),
            s.duration_us as f64 / 1000.0
        ));
        let child_prefix = if top {
            prefix.to_string()
        } else if last {
            format!("{prefix}   ")
        } else {
            format!("{prefix}│  ")
        };
        for (i, c) in n.children.iter().enumerate() {
            line(c, &child_prefix, i + 1 == n.children.len(), false, out);
        }
    }
    let mut out = String::new();
    line(root, "", true, true, &mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, service: &str, ts: u64) -> Span {
        Span {
            trace_id: "t".into(),
            id: id.into(),
            parent_id: parent.map(str::to_string),
            kind: "SERVER".into(),
            name: "GET /x".into(),
            timestamp_us: ts,
            duration_us: 1500,
            service: service.into(),
            tags: [("http.status_code".to_string(), "200".to_string())].into(),
        }
    }

    #[test]
    fn builds_and_renders_a_tree() {
        let spans = vec![
            span("c", Some("b"), "inventory", 3),
            span("a", Some("client"), "frontend", 1),
            span("b", Some("a"), "orders", 2),
            span("d", Some("b"), "inventory", 4),
        ];
        let trees = build_trees(&spans);
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0].walk().len(), 4);
        let text = render_tree(&trees[0]);
        assert_eq!(
            text,
            "frontend   SERVER GET /x  200 1.50 ms\n\
             └─ orders     SERVER GET /x  200 1.50 ms\n   \
             ├─ inventory  SERVER GET /x  200 1.50 ms\n   \
             └─ inventory  SERVER GET /x  200 1.50 ms\n"
        );
    }
}

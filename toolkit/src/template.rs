//! Config templates: `{{NAME}}` placeholders replaced by values, with every mistake (a missing
//! value, an unclosed `{{`) an error that names it, so a typo never reaches Envoy.

/// Replaces every `{{NAME}}` (spaces inside the braces allowed) of `template` by its value in
/// `vars`; a placeholder with no value, or an unclosed `{{`, is an error naming it.
pub fn render<K: AsRef<str>, V: AsRef<str>>(
    template: &str,
    vars: &[(K, V)],
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut missing: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            let near: String = rest[start..].chars().take(40).collect();
            format!("unclosed `{{{{` in a config template near {near:?}")
        })?;
        let key = after[..end].trim();
        match vars.iter().find(|(k, _)| k.as_ref() == key) {
            Some((_, value)) => out.push_str(value.as_ref()),
            None => {
                if !missing.iter().any(|m| m == key) {
                    missing.push(key.to_string());
                }
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        let names: Vec<String> = missing.iter().map(|m| format!("{{{{{m}}}}}")).collect();
        Err(format!("no value for placeholders {}", names.join(", ")))
    }
}

/// The distinct `{{NAME}}` placeholders of `template` (names made of letters, digits and `_`),
/// in order of first appearance.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !found.iter().any(|f| f == name)
        {
            found.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    found
}

/// Escapes `s` for use inside a single-quoted YAML scalar (`'...'`): doubles every `'`.
pub fn yaml_single_quoted(s: &str) -> String {
    s.replace('\'', "''")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_placeholders_and_names_missing_ones() {
        let vars = [("PORT_A", "1"), ("EDS_DIR", "/e")];
        assert_eq!(
            render("a: {{PORT_A}} p: {{ EDS_DIR }}/x {{PORT_A}}", &vars).unwrap(),
            "a: 1 p: /e/x 1"
        );
        let err = render("{{PORT_B}} {{PORT_C}} {{PORT_B}}", &vars).unwrap_err();
        assert_eq!(err, "no value for placeholders {{PORT_B}}, {{PORT_C}}");
        assert!(render("{{PORT_A", &vars).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn lists_placeholders_once_in_order() {
        assert_eq!(
            placeholders("{{B}} {{ A }} {{B}} {{not a name}} {{}}"),
            vec!["B".to_string(), "A".to_string()]
        );
    }

    #[test]
    fn quotes_for_yaml() {
        assert_eq!(yaml_single_quoted("it's"), "it''s");
    }
}

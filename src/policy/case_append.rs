//! Adding one case to a case file's text (`toolgate console --cases`), keeping everything
//! else in the file byte for byte.
//!
//! The new case is spliced into the text just before the `cases` array's closing bracket,
//! indented like the case before it, so a file a person keeps in git gets a diff of exactly
//! the added case: no re-formatting, no other case touched. The text must be a case file (a
//! JSON object with a `cases` array); anything else is refused rather than overwritten. The
//! cases already there are not validated: a file with a case still to be filled in is still
//! a file to add to.

use serde_json::Value as Json;

use super::json::{self, Value};

/// Why a case cannot be added to a file's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AppendError {
    #[error("it is not a case file: {0}")]
    NotACaseFile(String),
    #[error("it already has a case named {0:?}")]
    DuplicateName(String),
    #[error("the case cannot be written as JSON: {0}")]
    Encode(String),
}

/// `existing` (the file's text, `None` when there is no file yet) with `case` added as the
/// last element of its `cases` array. `name` is the case's name, which must be new in the
/// file.
pub(crate) fn append_case(
    existing: Option<&str>,
    name: &str,
    case: &Json,
) -> Result<String, AppendError> {
    let pretty =
        serde_json::to_string_pretty(case).map_err(|e| AppendError::Encode(e.to_string()))?;
    let Some(text) = existing.filter(|t| !t.trim().is_empty()) else {
        return Ok(format!(
            "{{\"cases\": [\n{}\n]}}\n",
            indented(&pretty, "  ")
        ));
    };
    let doc = json::parse(text).map_err(|e| {
        let (line, column) = json::Locator::new(text).locate(e.offset);
        AppendError::NotACaseFile(format!(
            "it is not JSON ({}, at {line}:{column})",
            e.message
        ))
    })?;
    let Value::Object(members) = &doc.root.value else {
        return Err(AppendError::NotACaseFile(
            "its top level is not a JSON object".into(),
        ));
    };
    let Some(cases) = members.iter().find(|m| m.key == "cases").map(|m| &m.value) else {
        return Err(AppendError::NotACaseFile(
            "its top level has no \"cases\" (is it a policy?)".into(),
        ));
    };
    let Value::Array(items) = &cases.value else {
        return Err(AppendError::NotACaseFile(
            "its \"cases\" is not an array".into(),
        ));
    };
    let taken = items.iter().any(|item| match &item.value {
        Value::Object(fields) => fields
            .iter()
            .any(|f| f.key == "name" && f.value.value == Value::String(name.to_owned())),
        _ => false,
    });
    if taken {
        return Err(AppendError::DuplicateName(name.to_owned()));
    }
    let Some(close) = closing_bracket(text, cases.offset) else {
        // The parser accepted the text, so the array is closed; this is not reached.
        return Err(AppendError::NotACaseFile(
            "its \"cases\" array is not closed".into(),
        ));
    };
    let mut out = String::with_capacity(text.len() + pretty.len() + 16);
    match items.first() {
        Some(first) => {
            let indent = indent_before(text, first.offset).unwrap_or("    ");
            // After the last element: the whitespace before the bracket stays where it is.
            let end = text[..close].trim_end().len();
            out.push_str(&text[..end]);
            out.push_str(",\n");
            out.push_str(&indented(&pretty, indent));
            out.push_str(&text[end..]);
        }
        None => {
            let outer = line_indent(text, cases.offset);
            let inner = format!("{outer}  ");
            out.push_str(&text[..cases.offset + 1]);
            out.push('\n');
            out.push_str(&indented(&pretty, &inner));
            out.push('\n');
            out.push_str(outer);
            out.push_str(&text[close..]);
        }
    }
    Ok(out)
}

/// `text` with every line indented by `indent`.
fn indented(text: &str, indent: &str) -> String {
    text.lines()
        .map(|l| format!("{indent}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whitespace before `offset` on its line, when nothing else comes before it there.
fn indent_before(text: &str, offset: usize) -> Option<&str> {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[start..offset];
    before
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then_some(before)
}

/// The leading whitespace of the line `offset` is on.
fn line_indent(text: &str, offset: usize) -> &str {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    let end = line
        .find(|c: char| c != ' ' && c != '\t')
        .unwrap_or(line.len());
    &line[..end]
}

/// The offset of the bracket closing the array that opens at `open`, in text the JSON
/// parser accepted (strings are skipped, escapes included).
fn closing_bracket(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.get(open) != Some(&b'[') {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, b) in bytes.iter().enumerate().skip(open) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (*b == b']').then_some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::cases::CaseFile;

    fn case(name: &str) -> Json {
        json!({"name": name, "call": {"tool": "t"}, "expect": {"decision": "allow"}})
    }

    #[test]
    fn a_case_goes_after_the_last_one_and_the_rest_of_the_file_stays_byte_for_byte() {
        let text = "{\n  \"cases\": [\n    {\"name\": \"first [\\\"]\", \"call\": {\"tool\": \"x\"},\n     \"expect\": {\"decision\": \"deny\"}}\n  ]\n}\n";
        let out = append_case(Some(text), "second", &case("second")).unwrap();
        let head = "{\n  \"cases\": [\n    {\"name\": \"first [\\\"]\", \"call\": {\"tool\": \"x\"},\n     \"expect\": {\"decision\": \"deny\"}},\n    {\n      \"name\": \"second\"";
        assert!(out.starts_with(head), "{out}");
        assert!(out.ends_with("}\n  ]\n}\n"), "{out}");
        let file = CaseFile::parse(&out, "cases.json").expect("still a valid case file");
        let names: Vec<&str> = file.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["first [\"]", "second"]);
    }

    #[test]
    fn a_missing_or_empty_file_becomes_a_case_file_and_an_empty_array_is_filled() {
        for existing in [None, Some(""), Some(" \n")] {
            let out = append_case(existing, "one", &case("one")).unwrap();
            assert_eq!(CaseFile::parse(&out, "c.json").unwrap().cases.len(), 1);
        }
        let out = append_case(Some("{\"cases\": []}\n"), "one", &case("one")).unwrap();
        assert!(
            out.starts_with("{\"cases\": [\n  {\n    \"name\": \"one\""),
            "{out}"
        );
        assert!(out.ends_with("\n]}\n"), "{out}");
        assert_eq!(CaseFile::parse(&out, "c.json").unwrap().cases.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_case_file_or_already_has_the_name_is_refused() {
        let refused = [
            ("{\"default\": \"deny\", \"tools\": {}}", "no \"cases\""),
            ("[1, 2]", "not a JSON object"),
            ("{\"cases\": {}}", "not an array"),
            ("{\"cases\": [", "not JSON"),
        ];
        for (text, why) in refused {
            let e = append_case(Some(text), "n", &case("n")).unwrap_err();
            assert!(
                matches!(&e, AppendError::NotACaseFile(m) if m.contains(why)),
                "{text}: {e}"
            );
        }
        let text = "{\"cases\": [{\"name\": \"n\", \"call\": {\"tool\": \"t\"}, \"expect\": {\"decision\": \"allow\"}}]}";
        assert_eq!(
            append_case(Some(text), "n", &case("n")),
            Err(AppendError::DuplicateName("n".into()))
        );
    }
}

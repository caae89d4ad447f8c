//! Writing an edited policy document back into its text, changing only what changed.
//!
//! The draft is edited as a `serde_json` document (key order kept); re-serialising all of it
//! would reformat the whole file, and the diff an operator confirms would be noise. So the
//! new document is spliced into the old text: the text of every value that did not change
//! is kept byte for byte, a changed value is rewritten in place, a new member is added after
//! the last one in the style of its object (one line or one member per line), a removed
//! member is cut with its comma. Whenever a case is not one of those, the smallest enclosing
//! value is rewritten whole. The result is checked: if it does not read back as exactly the
//! new document, the caller falls back to pretty printing the whole document.

use serde_json::Value;

/// Where a value is in the text, and where its parts are.
#[derive(Debug)]
struct Spanned {
    start: usize,
    end: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar,
    Array(Vec<Spanned>),
    /// Members in source order: key, where the key's opening quote is, the value.
    Object(Vec<(String, usize, Spanned)>),
}

/// Reads the value at `pos` (after whitespace). `None` if the text is not JSON there.
fn scan(text: &[u8], pos: usize, depth: usize) -> Option<Spanned> {
    if depth > 128 {
        return None;
    }
    let start = skip_ws(text, pos);
    match *text.get(start)? {
        b'{' => {
            let mut members = Vec::new();
            let mut p = skip_ws(text, start + 1);
            if text.get(p) == Some(&b'}') {
                return Some(Spanned {
                    start,
                    end: p + 1,
                    kind: Kind::Object(members),
                });
            }
            loop {
                let key_start = skip_ws(text, p);
                let key_end = string_end(text, key_start)?;
                let key: String = serde_json::from_slice(text.get(key_start..key_end)?).ok()?;
                let colon = skip_ws(text, key_end);
                if text.get(colon) != Some(&b':') {
                    return None;
                }
                let value = scan(text, colon + 1, depth + 1)?;
                p = skip_ws(text, value.end);
                members.push((key, key_start, value));
                match text.get(p)? {
                    b',' => p += 1,
                    b'}' => {
                        return Some(Spanned {
                            start,
                            end: p + 1,
                            kind: Kind::Object(members),
                        });
                    }
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut items = Vec::new();
            let mut p = skip_ws(text, start + 1);
            if text.get(p) == Some(&b']') {
                return Some(Spanned {
                    start,
                    end: p + 1,
                    kind: Kind::Array(items),
                });
            }
            loop {
                let item = scan(text, p, depth + 1)?;
                p = skip_ws(text, item.end);
                items.push(item);
                match text.get(p)? {
                    b',' => p += 1,
                    b']' => {
                        return Some(Spanned {
                            start,
                            end: p + 1,
                            kind: Kind::Array(items),
                        });
                    }
                    _ => return None,
                }
            }
        }
        b'"' => Some(Spanned {
            start,
            end: string_end(text, start)?,
            kind: Kind::Scalar,
        }),
        _ => {
            let mut end = start;
            while end < text.len()
                && !matches!(text[end], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                end += 1;
            }
            (end > start).then_some(Spanned {
                start,
                end,
                kind: Kind::Scalar,
            })
        }
    }
}

fn skip_ws(text: &[u8], mut p: usize) -> usize {
    while p < text.len() && matches!(text[p], b' ' | b'\t' | b'\n' | b'\r') {
        p += 1;
    }
    p
}

/// The end (exclusive) of the string starting with the quote at `p`.
fn string_end(text: &[u8], p: usize) -> Option<usize> {
    if text.get(p) != Some(&b'"') {
        return None;
    }
    let mut i = p + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The leading whitespace of the line `pos` is on.
fn indent_at(text: &str, pos: usize) -> &str {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let rest = &text[line_start..];
    let n = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    &rest[..n]
}

/// `value` pretty printed as if it started at a line indented by `indent`.
fn pretty(value: &Value, indent: &str) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.replace('\n', &format!("\n{indent}"))
}

/// A replacement of `text[start..end]`.
struct Patch {
    start: usize,
    end: usize,
    with: String,
}

/// `new` written into `old_text`, whose document is `old`. `None` when the text cannot be
/// spliced (the caller then prints the whole document).
pub(crate) fn splice(old_text: &str, old: &Value, new: &Value) -> Option<String> {
    let root = scan(old_text.as_bytes(), 0, 0)?;
    let mut patches = Vec::new();
    diff(old_text, &root, old, new, &mut patches);
    patches.sort_by_key(|p| p.start);
    let mut out = String::with_capacity(old_text.len() + 64);
    let mut at = 0;
    for p in patches {
        if p.start < at {
            return None;
        }
        out.push_str(old_text.get(at..p.start)?);
        out.push_str(&p.with);
        at = p.end;
    }
    out.push_str(old_text.get(at..)?);
    let back: Value = serde_json::from_str(&out).ok()?;
    // Equal as documents, and in the same key order (Value equality ignores order).
    (back == *new && serde_json::to_string(&back).ok() == serde_json::to_string(new).ok())
        .then_some(out)
}

fn rewrite(text: &str, span: &Spanned, new: &Value, patches: &mut Vec<Patch>) {
    let one_line = !text[span.start..span.end].contains('\n');
    let with = if one_line && !matches!(new, Value::Object(m) if m.len() > 4) {
        compact(new)
    } else {
        pretty(new, indent_at(text, span.start))
    };
    patches.push(Patch {
        start: span.start,
        end: span.end,
        with,
    });
}

/// One line, with a space after `:` and `,` like the hand-written examples.
fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), compact(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Array(a) => format!(
            "[ {} ]",
            a.iter().map(compact).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

fn diff(text: &str, span: &Spanned, old: &Value, new: &Value, patches: &mut Vec<Patch>) {
    if old == new && serde_json::to_string(old).ok() == serde_json::to_string(new).ok() {
        return;
    }
    match (&span.kind, old, new) {
        (Kind::Object(members), Value::Object(o), Value::Object(n)) if !members.is_empty() => {
            // Kept keys must keep their relative order, and new ones come after them.
            let kept: Vec<&String> = o.keys().filter(|k| n.contains_key(*k)).collect();
            let n_kept: Vec<&String> = n.keys().filter(|k| o.contains_key(*k)).collect();
            let added: Vec<(&String, &Value)> =
                n.iter().filter(|(k, _)| !o.contains_key(*k)).collect();
            let added_last = n.keys().skip(n_kept.len()).all(|k| !o.contains_key(k));
            if kept != n_kept || !added_last || members.len() != o.len() || kept.is_empty() {
                return rewrite(text, span, new, patches);
            }
            for (i, (key, key_start, value)) in members.iter().enumerate() {
                match n.get(key) {
                    Some(nv) => diff(text, value, &o[key], nv, patches),
                    None => {
                        // Cut the member with the comma before it (or after it, if first).
                        let (start, end) = if i > 0 {
                            (members[i - 1].2.end, value.end)
                        } else {
                            (*key_start, members[1].1)
                        };
                        patches.push(Patch {
                            start,
                            end,
                            with: String::new(),
                        });
                    }
                }
            }
            if !added.is_empty() {
                let last = members.last().map_or(span.start + 1, |m| m.2.end);
                let one_line = !text[span.start..span.end].contains('\n');
                let mut with = String::new();
                for (k, v) in added {
                    let key = Value::String(k.clone());
                    if one_line {
                        with.push_str(&format!(", {key}: {}", compact(v)));
                    } else {
                        let indent = members.last().map_or("", |m| indent_at(text, m.1));
                        with.push_str(&format!(",\n{indent}{key}: {}", pretty(v, indent)));
                    }
                }
                patches.push(Patch {
                    start: last,
                    end: last,
                    with,
                });
            }
        }
        (Kind::Array(items), Value::Array(o), Value::Array(n))
            if !items.is_empty() && n.len() >= o.len() && items.len() == o.len() =>
        {
            for (i, item) in items.iter().enumerate() {
                diff(text, item, &o[i], &n[i], patches);
            }
            if n.len() > o.len() {
                let last = &items[items.len() - 1];
                let one_line = !text[span.start..span.end].contains('\n');
                let indent = indent_at(text, last.start);
                let with: String = n[o.len()..]
                    .iter()
                    .map(|v| {
                        if one_line {
                            format!(", {}", compact(v))
                        } else {
                            format!(",\n{indent}{}", pretty(v, indent))
                        }
                    })
                    .collect();
                patches.push(Patch {
                    start: last.end,
                    end: last.end,
                    with,
                });
            }
        }
        _ => rewrite(text, span, new, patches),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(old_text: &str, new: Value) -> String {
        let old: Value = serde_json::from_str(old_text).unwrap();
        splice(old_text, &old, &new).expect("splices")
    }

    #[test]
    fn a_changed_scalar_is_rewritten_in_place_and_nothing_else_moves() {
        let old = "{\n  \"a\":   1,\n  \"b\": { \"x\": [1,2] }\n}\n";
        let out = check(old, serde_json::json!({"a": 2, "b": {"x": [1, 2]}}));
        assert_eq!(out, "{\n  \"a\":   2,\n  \"b\": { \"x\": [1,2] }\n}\n");
    }

    #[test]
    fn a_new_member_follows_the_style_of_its_object() {
        let old = "{\n  \"t\": {\n    \"a\": {}\n  },\n  \"l\": { \"max\": 1 }\n}";
        let out = check(
            old,
            serde_json::json!({"t": {"a": {}, "b": {"action": "deny"}}, "l": {"max": 1, "scope": "grant"}}),
        );
        assert_eq!(
            out,
            "{\n  \"t\": {\n    \"a\": {},\n    \"b\": {\n      \"action\": \"deny\"\n    }\n  },\n  \"l\": { \"max\": 1, \"scope\": \"grant\" }\n}"
        );
    }

    #[test]
    fn a_removed_member_goes_with_its_comma() {
        let old = "{ \"a\": 1, \"b\": 2, \"c\": 3 }";
        assert_eq!(
            check(old, serde_json::json!({"a": 1, "c": 3})),
            "{ \"a\": 1, \"c\": 3 }"
        );
        assert_eq!(
            check(old, serde_json::json!({"b": 2, "c": 3})),
            "{ \"b\": 2, \"c\": 3 }"
        );
    }

    #[test]
    fn text_that_is_not_json_is_not_spliced() {
        let old: Value = serde_json::json!({});
        assert!(splice("{ nope", &old, &serde_json::json!({"a": 1})).is_none());
    }
}

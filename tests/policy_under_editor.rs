//! The console's rule editor offers `under` without knowing about it: its ops are the policy
//! module's `Op::NAMES`, and what it writes is validated by the policy module.

use serde_json::json;
use toolgate::console::testing::Draft;
use toolgate::console::testing::{Field, OPS, RuleEditor};
use tui_input::InputRequest;

const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"read_file": {}}}"#;

fn focus(e: &mut RuleEditor, field: Field) {
    let at = e
        .fields()
        .iter()
        .position(|f| *f == field)
        .unwrap_or_else(|| panic!("the form has no {field:?}"));
    let by = at as isize - e.focus as isize;
    e.move_focus(by);
    assert_eq!(e.focused(), field);
}

fn type_value(e: &mut RuleEditor, text: &str) {
    focus(e, Field::CondValue(0));
    while e.type_text(InputRequest::DeletePrevChar) {}
    for c in text.chars() {
        e.type_text(InputRequest::InsertChar(c));
    }
}

#[test]
fn the_rule_editor_offers_under_and_validates_its_value_as_check_does() {
    assert!(OPS.contains(&"under"), "{OPS:?}");
    let draft = Draft::load("p.json", POLICY.into());
    let mut e = RuleEditor::open(
        "read_file",
        draft.rule_value("read_file"),
        vec!["args.path".into()],
    );
    e.add_condition();
    focus(&mut e, Field::CondOp(0));
    let under = OPS.iter().position(|op| *op == "under").unwrap();
    e.choose(under as isize - e.conditions[0].op as isize);
    assert_eq!(OPS[e.conditions[0].op], "under");

    type_value(&mut e, "/home/me/notes");
    assert_eq!(
        e.rule(),
        json!({"require": [{"path": "args.path", "op": "under", "value": "/home/me/notes"}]})
    );
    e.validate(&draft);
    assert!(e.problems.is_empty(), "{:?}", e.problems);

    type_value(&mut e, "notes");
    e.validate(&draft);
    assert!(
        e.problems
            .iter()
            .any(|p| p.contains("op \"under\" needs an absolute path as its value")),
        "{:?}",
        e.problems
    );
}

//! The `:` commands an operator can type, for help.

/// The `:` commands, as help lists them (the grammar is `update`'s `command`).
pub(crate) const COMMANDS: &[(&str, &str)] = &[
    (
        ":theme NAME",
        "switch theme (dark, light, high-contrast, or yours)",
    ),
    (":approve ID", "approve a held call"),
    (":deny ID [REASON]", "deny a held call"),
    (":filter TEXT", "filter the Live view"),
    (
        ":allow TOOL  :hold TOOL",
        "draft: allow the tool / hold its calls for approval",
    ),
    (":block TOOL [REASON]", "draft: deny the tool (a deny rule)"),
    (
        ":shadow TOOL",
        "draft: a shadow deny rule: reported as would deny, not enforced (P promotes it)",
    ),
    (
        ":limit TOOL MAX/WINDOW [SCOPE]",
        "draft: limit the tool, e.g. :limit echo 2/minute",
    ),
    (
        ":unlimit TOOL  :hide TOOL",
        "draft: drop the tool's limits / hide the tool",
    ),
    (
        ":default allow|deny|require_approval",
        "draft: the decision no rule makes",
    ),
    (
        ":w  :w!  :undo  :reload",
        "write (diff, y/n; ! over a changed file), undo, reload",
    ),
    (":live :holds :policy :limits", "switch view"),
    (":q  :q!", "quit (:q! without asking)"),
];

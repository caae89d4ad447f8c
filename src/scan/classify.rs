//! The risk class of one tool, and its flags, from what its server says about it.
//!
//! MCP annotations decide when the server gives them: `readOnlyHint: true` is `read`;
//! otherwise `destructiveHint: false` is `write` and `destructiveHint: true` (or absent, which
//! the specification says to read as destructive) is `destructive`. A tool whose server gives
//! neither hint is guessed from its name (`delete_*` anywhere in it beats `create_*`, which
//! beats `get_*`) and, when the name says nothing, from the first telling word of its
//! description; a guess is marked as one, and a tool nothing tells about is guessed `write`.
//!
//! Flags: *handles secrets* when a property of its input or output schema, at any depth, is
//! named like a secret ([`crate::redact::is_secret_key`], minus token counts such as
//! `maxTokens`); *open world* from `openWorldHint`, or, without it, from words that reach
//! outside (`url`, `email`, `web`, ...).

use serde::Serialize;
use serde_json::Value;

use crate::wire::ToolInfo;

/// How much harm a call of the tool can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    /// Looks, changes nothing.
    Read,
    /// Changes or creates something that can be changed back.
    Write,
    /// Deletes, overwrites or does what cannot be undone.
    Destructive,
}

impl RiskClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::Read => "read",
            RiskClass::Write => "write",
            RiskClass::Destructive => "destructive",
        }
    }
}

/// What the class was decided from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Evidence {
    /// The server's annotation that decided (`readOnlyHint: true`, `destructiveHint: false`,
    /// `destructiveHint: true`, or `readOnlyHint: false` with no `destructiveHint`, which the
    /// specification reads as destructive).
    Annotations { hint: String },
    /// A word of the tool's name (`delete` in `delete_file`).
    Name { word: String },
    /// A word of the tool's description.
    Description { word: String },
    /// Nothing told: the cautious middle.
    Nothing,
}

/// A tool's risk class and flags. `guessed` is true unless annotations decided the class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub class: RiskClass,
    pub guessed: bool,
    pub evidence: Evidence,
    /// Schema properties named like secrets, as paths (`input.auth.apiKey`, `output.token`).
    pub secret_fields: Vec<String>,
    /// The tool reaches outside the server's own world (the web, other people, other
    /// systems).
    pub open_world: bool,
    /// `open_world` came from `openWorldHint` rather than from words.
    pub open_world_declared: bool,
    /// `idempotentHint`, when given: repeating the call changes nothing more.
    pub idempotent: Option<bool>,
}

impl Classification {
    /// Whether the tool takes or returns secrets.
    pub fn handles_secrets(&self) -> bool {
        !self.secret_fields.is_empty()
    }

    /// The flags as short words: `secrets`, `open-world`.
    pub fn flag_words(&self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if self.handles_secrets() {
            flags.push("secrets");
        }
        if self.open_world {
            flags.push("open-world");
        }
        flags
    }
}

/// Classifies one tool. Pure: the same tool always gets the same answer.
pub fn classify(tool: &ToolInfo) -> Classification {
    let hints = tool.annotations.as_ref().and_then(Value::as_object);
    let hint = |name: &str| hints.and_then(|h| h.get(name)).and_then(Value::as_bool);
    let (read_only, destructive) = (hint("readOnlyHint"), hint("destructiveHint"));

    let name_words = words(&tool.name);
    let description = tool.description.as_deref().unwrap_or("");
    let description_words = words(description);

    let (class, evidence) = match (read_only, destructive) {
        (Some(true), _) => (RiskClass::Read, annotation("readOnlyHint: true")),
        (_, Some(false)) => (RiskClass::Write, annotation("destructiveHint: false")),
        (_, Some(true)) => (RiskClass::Destructive, annotation("destructiveHint: true")),
        (Some(false), None) => (RiskClass::Destructive, annotation("readOnlyHint: false")),
        (None, None) => guess(&name_words, &description_words),
    };

    let (open_world, open_world_declared) = match hint("openWorldHint") {
        Some(declared) => (declared, true),
        None => (
            name_words
                .iter()
                .any(|w| OPEN_WORLD_NAME.contains(&w.as_str()))
                || description_words
                    .iter()
                    .any(|w| OPEN_WORLD_TEXT.contains(&w.as_str())),
            false,
        ),
    };

    let mut secret_fields = Vec::new();
    if let Some(schema) = &tool.input_schema {
        secret_properties(schema, "input", &mut secret_fields, 0);
    }
    if let Some(schema) = &tool.output_schema {
        secret_properties(schema, "output", &mut secret_fields, 0);
    }

    Classification {
        class,
        guessed: !matches!(evidence, Evidence::Annotations { .. }),
        evidence,
        secret_fields,
        open_world,
        open_world_declared,
        idempotent: hint("idempotentHint"),
    }
}

fn annotation(hint: &str) -> Evidence {
    Evidence::Annotations { hint: hint.into() }
}

/// Verbs that make a tool's name destructive, write or read. Names are matched word by word
/// against whole words (a trailing `s` allowed), so `dropbox` is not `drop` and `list_orders`
/// is not `order`.
const NAME_DESTRUCTIVE: &[&str] = &[
    "delete",
    "del",
    "remove",
    "rm",
    "revoke",
    "drop",
    "purge",
    "destroy",
    "erase",
    "wipe",
    "truncate",
    "terminate",
    "kill",
    "uninstall",
    "unlink",
    "cancel",
    "prune",
    "nuke",
    "overwrite",
    "shutdown",
    "exec",
    "execute",
    "shell",
    "eval",
    "sudo",
    "unregister",
    "deprovision",
    "unsubscribe",
    "evict",
    "flush",
];
const NAME_WRITE: &[&str] = &[
    "create",
    "update",
    "send",
    "book",
    "set",
    "add",
    "put",
    "post",
    "patch",
    "write",
    "edit",
    "modify",
    "insert",
    "upload",
    "submit",
    "publish",
    "move",
    "rename",
    "copy",
    "start",
    "stop",
    "run",
    "trigger",
    "invoke",
    "call",
    "deploy",
    "install",
    "enable",
    "disable",
    "toggle",
    "assign",
    "invite",
    "schedule",
    "reply",
    "comment",
    "merge",
    "push",
    "commit",
    "approve",
    "reject",
    "pay",
    "charge",
    "refund",
    "transfer",
    "order",
    "buy",
    "purchase",
    "reset",
    "archive",
    "register",
    "save",
    "import",
    "sync",
    "apply",
    "restart",
    "lock",
    "unlock",
    "share",
    "grant",
    "replace",
    "generate",
    "make",
    "new",
    "notify",
    "email",
    "message",
    "tag",
    "label",
    "mark",
    "record",
    "log",
    "store",
    "configure",
    "rotate",
    "issue",
    "open",
    "close",
    "attach",
    "link",
    "subscribe",
    "follow",
    "like",
    "star",
    "fork",
    "clone",
    "mutate",
    "change",
    "append",
    "prepend",
    "increment",
    "decrement",
    "assign",
    "upsert",
    "provision",
    "scale",
    "resize",
    "restore",
    "undo",
    "redo",
    "mkdir",
    "touch",
    "init",
    "initialize",
    "setup",
    "connect",
    "disconnect",
    "login",
    "logout",
];
const NAME_READ: &[&str] = &[
    "get",
    "list",
    "search",
    "read",
    "find",
    "fetch",
    "query",
    "describe",
    "show",
    "view",
    "lookup",
    "look",
    "count",
    "check",
    "inspect",
    "download",
    "export",
    "status",
    "info",
    "stat",
    "browse",
    "preview",
    "explain",
    "summarize",
    "echo",
    "retrieve",
    "tree",
    "diff",
    "validate",
    "verify",
    "calculate",
    "compute",
    "convert",
    "translate",
    "format",
    "parse",
    "render",
    "ping",
    "health",
    "whoami",
    "history",
    "report",
    "watch",
    "tail",
    "head",
    "scan",
    "analyze",
    "analyse",
    "estimate",
    "quote",
    "resolve",
    "sum",
    "compare",
    "is",
    "has",
    "can",
    "exists",
    "peek",
    "load",
    "open",
    "ls",
    "cat",
    "grep",
    "dump",
    "test",
    "sample",
    "simulate",
    "lint",
    "detect",
    "identify",
    "recommend",
    "suggest",
    "fetch",
];

/// Stems that make a description's first telling word destructive, write or read: a word
/// matches when it starts with the stem (`deletes`, `deleting`, `deleted` all match
/// `delet`). Nouns that are also verbs (`order`, `message`) are left out: in a description
/// they are mostly objects.
const TEXT_DESTRUCTIVE: &[&str] = &[
    "delet",
    "remov",
    "revok",
    "purg",
    "destroy",
    "erase",
    "wipe",
    "truncat",
    "terminat",
    "uninstall",
    "unlink",
    "cancel",
    "prune",
    "overwrit",
    "irreversib",
    "permanent",
    "execut",
    "drops",
    "dropping",
];
const TEXT_WRITE: &[&str] = &[
    "creat",
    "updat",
    "send",
    "book",
    "sets",
    "adds",
    "puts",
    "posts",
    "writ",
    "edit",
    "modif",
    "insert",
    "upload",
    "submit",
    "publish",
    "moves",
    "renam",
    "copies",
    "start",
    "stops",
    "runs",
    "trigger",
    "invok",
    "deploy",
    "install",
    "enabl",
    "disabl",
    "toggl",
    "assign",
    "invit",
    "schedul",
    "repl",
    "merg",
    "pushes",
    "commit",
    "approv",
    "pays",
    "charg",
    "refund",
    "transfer",
    "buys",
    "purchas",
    "reset",
    "archiv",
    "regist",
    "saves",
    "import",
    "sync",
    "appl",
    "restart",
    "locks",
    "unlock",
    "shares",
    "grants",
    "generat",
    "makes",
    "notif",
    "opens",
    "closes",
    "attach",
    "subscrib",
    "chang",
    "append",
    "restor",
    "provision",
    "configur",
    "rotat",
    "issues",
    "stores",
    "records",
];
const TEXT_READ: &[&str] = &[
    "get",
    "gets",
    "list",
    "search",
    "read",
    "find",
    "fetch",
    "quer",
    "describ",
    "shows",
    "view",
    "look",
    "count",
    "check",
    "inspect",
    "download",
    "export",
    "brows",
    "preview",
    "explain",
    "summar",
    "echo",
    "return",
    "retriev",
    "validat",
    "verif",
    "calculat",
    "comput",
    "convert",
    "translat",
    "pars",
    "render",
    "analy",
    "estimat",
    "resolv",
    "compar",
    "provid",
    "display",
    "report",
    "detect",
    "identif",
    "recommend",
    "suggest",
];

/// Words of a name that mean a tool reaches beyond the server's own world.
const OPEN_WORLD_NAME: &[&str] = &[
    "url", "urls", "uri", "http", "https", "web", "website", "internet", "online", "browser",
    "email", "emails", "mail", "sms", "slack", "tweet", "webhook", "external", "remote", "publish",
    "public",
];
/// The same in a description, where a noun like `email` is mostly a field: only words that
/// say the tool itself goes out.
const OPEN_WORLD_TEXT: &[&str] = &[
    "url", "urls", "http", "https", "web", "website", "internet", "online", "browser", "emails",
    "mails", "sms", "slack", "tweets", "webhook", "webhooks", "external",
];

/// A name word matches a verb when it is the verb, or the verb with a trailing `s`.
fn is_verb(word: &str, verbs: &[&str]) -> bool {
    verbs.iter().any(|v| {
        word == *v || (word.len() == v.len() + 1 && word.starts_with(v) && word.ends_with('s'))
    })
}

/// The class from the name: a destructive verb anywhere in it; else the first word's verb
/// (`list_orders`), else the last word's (`user_create`), else any write or read verb. Else
/// the first word of the description that says anything.
fn guess(name: &[String], description: &[String]) -> (RiskClass, Evidence) {
    let by_name = |word: &String, class| (class, Evidence::Name { word: word.clone() });
    if let Some(word) = name.iter().find(|w| is_verb(w, NAME_DESTRUCTIVE)) {
        return by_name(word, RiskClass::Destructive);
    }
    let candidates = name
        .first()
        .into_iter()
        .chain(name.last())
        .chain(name.iter());
    for word in candidates {
        if is_verb(word, NAME_WRITE) {
            return by_name(word, RiskClass::Write);
        }
        if is_verb(word, NAME_READ) {
            return by_name(word, RiskClass::Read);
        }
    }
    let stem = |word: &str, stems: &[&str]| stems.iter().any(|s| word.starts_with(s));
    for word in description {
        let class = if stem(word, TEXT_DESTRUCTIVE) {
            RiskClass::Destructive
        } else if stem(word, TEXT_WRITE) {
            RiskClass::Write
        } else if stem(word, TEXT_READ) {
            RiskClass::Read
        } else {
            continue;
        };
        return (class, Evidence::Description { word: word.clone() });
    }
    (RiskClass::Write, Evidence::Nothing)
}

/// Lowercase words of a name or text: split on anything not a letter or digit, and between
/// a lowercase letter and an uppercase one (`deleteUser` → `delete`, `user`).
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in text.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Names that contain a secret word but count tokens rather than hold one.
fn counts_tokens(key: &str) -> bool {
    let folded: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    [
        "maxtoken",
        "tokencount",
        "tokenlimit",
        "numtoken",
        "tokensused",
        "tokenusage",
        "totaltoken",
        "inputtoken",
        "outputtoken",
        "completiontoken",
        "prompttoken",
        "tokenizer",
    ]
    .iter()
    .any(|f| folded.contains(f))
}

/// Schemas nested deeper than this are not followed (a hostile server could send any depth).
const MAX_SCHEMA_DEPTH: usize = 32;

/// Collects the paths of secret-named properties anywhere in a JSON Schema.
fn secret_properties(schema: &Value, path: &str, out: &mut Vec<String>, depth: usize) {
    if depth > MAX_SCHEMA_DEPTH {
        return;
    }
    let Value::Object(schema) = schema else {
        return;
    };
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (key, sub) in properties {
            let here = format!("{path}.{key}");
            if crate::redact::is_secret_key(key) && !counts_tokens(key) {
                out.push(here.clone());
            }
            secret_properties(sub, &here, out, depth + 1);
        }
    }
    for nested in ["items", "additionalProperties", "not"] {
        if let Some(sub) = schema.get(nested) {
            secret_properties(sub, path, out, depth + 1);
        }
    }
    for list in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(subs)) = schema.get(list) {
            for sub in subs {
                secret_properties(sub, path, out, depth + 1);
            }
        }
    }
    for defs in ["$defs", "definitions"] {
        if let Some(Value::Object(subs)) = schema.get(defs) {
            for sub in subs.values() {
                secret_properties(sub, path, out, depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, description: &str) -> ToolInfo {
        ToolInfo {
            name: name.into(),
            description: (!description.is_empty()).then(|| description.into()),
            input_schema: Some(json!({"type": "object"})),
            output_schema: None,
            annotations: None,
        }
    }

    fn annotated(name: &str, annotations: Value) -> ToolInfo {
        ToolInfo {
            annotations: Some(annotations),
            ..tool(name, "")
        }
    }

    #[test]
    fn names_decide_the_class_when_there_are_no_annotations() {
        for (name, class) in [
            ("get_user", RiskClass::Read),
            ("listOrders", RiskClass::Read),
            ("search-issues", RiskClass::Read),
            ("read_file", RiskClass::Read),
            ("create_api_key", RiskClass::Write),
            ("updateInvoice", RiskClass::Write),
            ("send_message", RiskClass::Write),
            ("book_flight", RiskClass::Write),
            ("delete_account", RiskClass::Destructive),
            ("removeMember", RiskClass::Destructive),
            ("revoke_token", RiskClass::Destructive),
            ("drop_table", RiskClass::Destructive),
            ("cache_purge", RiskClass::Destructive),
            ("run_shell_command", RiskClass::Destructive),
        ] {
            let c = classify(&tool(name, ""));
            assert_eq!(c.class, class, "{name}");
            assert!(c.guessed, "{name} is a guess");
            assert!(matches!(c.evidence, Evidence::Name { .. }), "{name}");
        }
    }

    #[test]
    fn a_destructive_word_anywhere_in_the_name_beats_a_read_verb() {
        let c = classify(&tool("list_and_delete_stale_sessions", ""));
        assert_eq!(c.class, RiskClass::Destructive);
        assert_eq!(
            c.evidence,
            Evidence::Name {
                word: "delete".into()
            }
        );
    }

    #[test]
    fn name_verbs_match_whole_words_only() {
        assert_eq!(classify(&tool("settings", "")).evidence, Evidence::Nothing);
        assert_eq!(
            classify(&tool("get_dropbox_file", "")).class,
            RiskClass::Read
        );
        assert_eq!(classify(&tool("list_orders", "")).class, RiskClass::Read);
        assert_eq!(classify(&tool("user_create", "")).class, RiskClass::Write);
        assert_eq!(classify(&tool("deletes", "")).class, RiskClass::Destructive);
    }

    #[test]
    fn the_description_decides_when_the_name_says_nothing() {
        let c = classify(&tool("user_account", "Permanently erases the account."));
        assert_eq!(c.class, RiskClass::Destructive);
        assert_eq!(
            c.evidence,
            Evidence::Description {
                word: "permanently".into()
            }
        );
        let c = classify(&tool("weather", "Returns the forecast for a city."));
        assert_eq!(c.class, RiskClass::Read);
        let c = classify(&tool("ticket", "Opens a new support ticket."));
        assert_eq!(c.class, RiskClass::Write);
    }

    #[test]
    fn a_tool_nothing_tells_about_is_a_guessed_write() {
        let c = classify(&tool("frobnicate", "Does the thing."));
        assert_eq!((c.class, c.guessed), (RiskClass::Write, true));
        assert_eq!(c.evidence, Evidence::Nothing);
    }

    #[test]
    fn annotations_decide_over_the_name() {
        // A name that sounds harmless, declared destructive by its server.
        let c = classify(&annotated(
            "get_and_reset",
            json!({"readOnlyHint": false, "destructiveHint": true}),
        ));
        assert_eq!((c.class, c.guessed), (RiskClass::Destructive, false));
        // A name that sounds destructive, declared read-only.
        let c = classify(&annotated("delete_preview", json!({"readOnlyHint": true})));
        assert_eq!((c.class, c.guessed), (RiskClass::Read, false));
        let c = classify(&annotated(
            "create_directory",
            json!({"readOnlyHint": false, "destructiveHint": false, "idempotentHint": true}),
        ));
        assert_eq!((c.class, c.guessed), (RiskClass::Write, false));
        assert_eq!(c.idempotent, Some(true));
    }

    #[test]
    fn not_read_only_without_a_destructive_hint_is_destructive_as_the_spec_defaults() {
        let c = classify(&annotated("tidy", json!({"readOnlyHint": false})));
        assert_eq!((c.class, c.guessed), (RiskClass::Destructive, false));
        assert_eq!(
            c.evidence,
            Evidence::Annotations {
                hint: "readOnlyHint: false".into()
            }
        );
        assert!(crate::scan::suggest::because(&c).contains("does not say it is harmless"));
    }

    #[test]
    fn annotations_without_hints_about_effects_leave_the_class_guessed() {
        let c = classify(&annotated(
            "delete_row",
            json!({"title": "Delete", "openWorldHint": false}),
        ));
        assert_eq!((c.class, c.guessed), (RiskClass::Destructive, true));
        assert!(!c.open_world && c.open_world_declared);
    }

    #[test]
    fn open_world_comes_from_the_hint_or_from_words() {
        let c = classify(&annotated("fetch", json!({"openWorldHint": true})));
        assert!(c.open_world && c.open_world_declared);
        let c = classify(&tool("fetch_url", "Downloads a page"));
        assert!(c.open_world && !c.open_world_declared);
        let c = classify(&tool("get_sum", "Adds two numbers"));
        assert!(!c.open_world);
    }

    #[test]
    fn secrets_are_found_in_input_and_output_schemas_at_any_depth() {
        let t = ToolInfo {
            input_schema: Some(json!({"type": "object", "properties": {
                "name": {"type": "string"},
                "auth": {"type": "object", "properties": {"apiKey": {"type": "string"}}},
                "items": {"type": "array", "items": {"type": "object",
                    "properties": {"private_key": {"type": "string"}}}},
            }})),
            output_schema: Some(json!({"type": "object", "properties": {
                "result": {"anyOf": [{"type": "object", "properties": {"access_token": {}}}]},
                "password": {"type": "string"},
            }})),
            ..tool("create_key", "")
        };
        let c = classify(&t);
        assert_eq!(
            c.secret_fields,
            [
                // `auth` is a secret word of its own (crate::redact), so the object counts too.
                "input.auth",
                "input.auth.apiKey",
                "input.items.private_key",
                "output.result.access_token",
                "output.password"
            ]
        );
        assert!(c.handles_secrets());
        assert_eq!(c.flag_words(), ["secrets"]);
    }

    #[test]
    fn token_counts_are_not_secrets() {
        let t = ToolInfo {
            input_schema: Some(json!({"properties": {"maxTokens": {}, "prompt": {}}})),
            output_schema: Some(json!({"properties": {"total_tokens": {}}})),
            ..tool("sample", "")
        };
        assert!(!classify(&t).handles_secrets());
    }

    #[test]
    fn a_hostile_schema_depth_is_cut_off_without_panicking() {
        let mut schema = json!({"properties": {"token": {}}});
        for _ in 0..100 {
            schema = json!({"items": schema});
        }
        let t = ToolInfo {
            input_schema: Some(schema),
            ..tool("deep", "")
        };
        assert!(!classify(&t).handles_secrets());
    }

    #[test]
    fn words_split_case_and_punctuation() {
        assert_eq!(
            words("getAPIKey for_user-2.x"),
            ["get", "apikey", "for", "user", "2", "x"]
        );
    }
}

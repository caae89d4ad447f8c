//! How the audit log's settings are spelled on the command line (`--audit-args`,
//! `--audit-fail`). The settings themselves are the gateway's plain enums; clap stays here,
//! at the edge, so the core does not depend on how a person types them.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::gateway::audit::{AuditArgs, AuditFail};

impl ValueEnum for AuditArgs {
    fn value_variants<'a>() -> &'a [Self] {
        &[AuditArgs::Keys, AuditArgs::Full]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            AuditArgs::Keys => PossibleValue::new("keys")
                .help("Argument keys and a keyed hash (HMAC) of the arguments; no values"),
            AuditArgs::Full => PossibleValue::new("full")
                .help("Keys, hash, and the values with whatever looks secret redacted"),
        })
    }
}

impl ValueEnum for AuditFail {
    fn value_variants<'a>() -> &'a [Self] {
        &[AuditFail::Closed, AuditFail::Open]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            AuditFail::Closed => PossibleValue::new("closed").help(
                "Denied, with a reason saying the audit log cannot be written, until it can again",
            ),
            AuditFail::Open => PossibleValue::new("open").help(
                "Decided as usual, their records waiting in memory (up to 16 MiB) until the log \
                 can be written; the outage is reported all the same",
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::{AuditArgs, AuditFail};

    #[test]
    fn every_setting_has_the_spelling_the_help_and_readme_use() {
        let names = |values: Vec<Option<clap::builder::PossibleValue>>| -> Vec<String> {
            values
                .into_iter()
                .map(|v| v.expect("every variant is spelled").get_name().to_owned())
                .collect()
        };
        let args = AuditArgs::value_variants()
            .iter()
            .map(|v| v.to_possible_value());
        assert_eq!(names(args.collect()), ["keys", "full"]);
        let fail = AuditFail::value_variants()
            .iter()
            .map(|v| v.to_possible_value());
        assert_eq!(names(fail.collect()), ["closed", "open"]);
        assert_eq!(AuditArgs::from_str("full", false), Ok(AuditArgs::Full));
        assert_eq!(AuditFail::from_str("open", false), Ok(AuditFail::Open));
    }
}

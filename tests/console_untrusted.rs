//! Whatever text a gateway sends, the console draws it without panicking and without letting
//! a control character or bidi override reach the terminal.

mod console_support;

use console_support::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use proptest::prelude::*;
use toolgate::console::testing::{AppEvent, State, update};
use toolgate::testing::wire::{EventKind, Outcome, Verdict};

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_text_is_drawn_safely(
        tool in "\\PC{0,40}|[\\x00-\\x1f\\x7f-\\u{9f}\\u{202e}\\u{2066}a-z日本\\u{301}]{0,40}",
        grant in "\\PC{0,20}|[\\x00-\\x1f\\u{202e}x]{0,20}",
        reason in any::<String>(),
        summary in any::<String>(),
        arg_key in any::<String>(),
        arg_value in any::<String>(),
        width in 1u16..160,
        height in 1u16..40,
    ) {
        let mut s = State::new(t0(), 100);
        let now = at_ms(60_000);
        update(&mut s, up("gw"), now);
        let mut c = call("gw", 1, &tool, &grant, Verdict::Hold);
        c.reason = reason.into();
        c.args = serde_json::json!({ arg_key: arg_value }).into();
        update(&mut s, net("gw", 1, at_ms(1_000), EventKind::Call(c)), now);
        update(&mut s, net("gw", 2, at_ms(2_000), EventKind::Outcome(Outcome {
            call_id: "gw-1".into(),
            latency_us: 1,
            error: true,
            summary: Some(summary.into()),
        })), now);
        for code in [KeyCode::Up, KeyCode::Enter] {
            update(&mut s, AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE)), now);
        }
        for view in ['1', '2'] {
            update(&mut s, AppEvent::Key(KeyEvent::new(KeyCode::Char(view), KeyModifiers::NONE)), now);
            let buf = render(&s, width, height);
            for cell in buf.content.iter() {
                prop_assert!(!cell.symbol().chars().any(unsafe_char), "{:?}", cell.symbol());
            }
        }
    }
}

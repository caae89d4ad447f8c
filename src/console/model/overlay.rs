//! The layers drawn over a view: help, the review of a learned policy, the rule editor, the
//! write review, a prompt.
//!
//! They form a stack, as helix's compositor does: the top layer gets the keys first (each
//! layer has its own scope in the binding table; help lets the view's keys through), is
//! drawn last, and Esc pops it. Their priority is said once, by their order on the stack,
//! instead of being written out wherever keys are read, layers drawn, or Esc handled.

use tui_input::Input;

use super::authoring::Review;
use super::editor::RuleEditor;
use super::learn::LearnReview;

/// One layer over the view.
#[derive(Debug, Clone)]
pub enum Overlay {
    /// The keys of what is under it (`?`).
    Help,
    /// The review of a learned policy (`--review-learned`): its proposals one by one, then
    /// the summary and what-if; the rule editor and the write review open over it.
    Learn(Box<LearnReview>),
    /// The rule editor on a Policy row (or on a learned proposal, over [`Overlay::Learn`]).
    Editor(Box<RuleEditor>),
    /// The diff and what-if of a policy write, asking `y`/`n`.
    Review(Review),
    /// A line being typed, or a question, on the bottom line.
    Prompt(Prompt),
}

/// What the bottom line is asking for.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// `/` filter being typed (applied live as it changes).
    Filter(Input),
    /// `:` command being typed.
    Command(Input),
    /// The reason for denying `call_id`.
    DenyReason { call_id: String, input: Input },
    /// `q` with calls held: quit anyway?
    ConfirmQuit,
    /// Leaving the learned-policy review (`quit`: quitting the console) would drop the
    /// choices made in it: drop them?
    DropLearned { quit: bool },
    /// `MAX/WINDOW` for a limit on `tool` (`r` on a call, `l` in Policy).
    Rate { tool: String, input: Input },
    /// A new `max` (or `window`, when `max` is false) for `counter` (Limits view).
    CounterEdit {
        counter: String,
        max: bool,
        input: Input,
    },
}

impl Prompt {
    /// Whether the prompt is a line of text being typed (every key not bound is text).
    pub fn takes_text(&self) -> bool {
        !matches!(self, Prompt::ConfirmQuit | Prompt::DropLearned { .. })
    }
}

/// The stack of layers, bottom first.
#[derive(Debug, Default)]
pub struct Overlays(Vec<Overlay>);

impl Overlays {
    /// The layer that gets the keys: the last opened still open.
    pub fn top(&self) -> Option<&Overlay> {
        self.0.last()
    }

    /// Every layer, bottom first (the order they are drawn in).
    pub fn iter(&self) -> impl Iterator<Item = &Overlay> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, overlay: Overlay) {
        self.0.push(overlay);
    }

    /// Closes the top layer.
    pub fn pop(&mut self) -> Option<Overlay> {
        self.0.pop()
    }

    /// Opens `prompt` on top (one already on top gives way to it).
    pub fn open_prompt(&mut self, prompt: Prompt) {
        if matches!(self.top(), Some(Overlay::Prompt(_))) {
            self.0.pop();
        }
        self.0.push(Overlay::Prompt(prompt));
    }

    /// The prompt, if the top layer is one.
    pub fn prompt(&self) -> Option<&Prompt> {
        match self.top() {
            Some(Overlay::Prompt(p)) => Some(p),
            _ => None,
        }
    }

    pub fn prompt_mut(&mut self) -> Option<&mut Prompt> {
        match self.0.last_mut() {
            Some(Overlay::Prompt(p)) => Some(p),
            _ => None,
        }
    }

    /// Takes the prompt off the top, if the top layer is one.
    pub fn take_prompt(&mut self) -> Option<Prompt> {
        match self.0.pop() {
            Some(Overlay::Prompt(p)) => Some(p),
            Some(other) => {
                self.0.push(other);
                None
            }
            None => None,
        }
    }

    /// The rule editor, if one is open.
    pub fn editor(&self) -> Option<&RuleEditor> {
        self.0.iter().rev().find_map(|o| match o {
            Overlay::Editor(e) => Some(&**e),
            _ => None,
        })
    }

    pub fn editor_mut(&mut self) -> Option<&mut RuleEditor> {
        self.0.iter_mut().rev().find_map(|o| match o {
            Overlay::Editor(e) => Some(&mut **e),
            _ => None,
        })
    }

    /// The write review, if one is open.
    pub fn review(&self) -> Option<&Review> {
        self.0.iter().rev().find_map(|o| match o {
            Overlay::Review(r) => Some(r),
            _ => None,
        })
    }

    pub fn review_mut(&mut self) -> Option<&mut Review> {
        self.0.iter_mut().rev().find_map(|o| match o {
            Overlay::Review(r) => Some(r),
            _ => None,
        })
    }

    /// Closes the write review, wherever it is, and returns it.
    pub fn take_review(&mut self) -> Option<Review> {
        let i = self
            .0
            .iter()
            .rposition(|o| matches!(o, Overlay::Review(_)))?;
        match self.0.remove(i) {
            Overlay::Review(r) => Some(r),
            _ => None,
        }
    }

    /// Closes the rule editor, wherever it is; whether one was open.
    pub fn close_editor(&mut self) -> bool {
        let before = self.0.len();
        self.0.retain(|o| !matches!(o, Overlay::Editor(_)));
        self.0.len() != before
    }

    /// The learned-policy review, if one is open.
    pub fn learn(&self) -> Option<&LearnReview> {
        self.0.iter().rev().find_map(|o| match o {
            Overlay::Learn(l) => Some(&**l),
            _ => None,
        })
    }

    pub fn learn_mut(&mut self) -> Option<&mut LearnReview> {
        self.0.iter_mut().rev().find_map(|o| match o {
            Overlay::Learn(l) => Some(&mut **l),
            _ => None,
        })
    }

    /// Closes the learned-policy review and every layer opened over it.
    pub fn close_learn(&mut self) -> bool {
        match self.0.iter().rposition(|o| matches!(o, Overlay::Learn(_))) {
            Some(i) => {
                self.0.truncate(i);
                true
            }
            None => false,
        }
    }

    pub fn has_help(&self) -> bool {
        self.0.iter().any(|o| matches!(o, Overlay::Help))
    }

    /// Closes help, wherever it is.
    pub fn close_help(&mut self) {
        self.0.retain(|o| !matches!(o, Overlay::Help));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_layer_is_the_last_opened_and_pop_closes_only_it() {
        let mut o = Overlays::default();
        o.push(Overlay::Help);
        o.open_prompt(Prompt::Command(Input::default()));
        assert!(matches!(o.prompt(), Some(Prompt::Command(_))));
        o.open_prompt(Prompt::ConfirmQuit);
        assert!(
            matches!(o.prompt(), Some(Prompt::ConfirmQuit)),
            "a prompt replaces the prompt on top"
        );
        assert!(matches!(o.pop(), Some(Overlay::Prompt(_))));
        assert!(matches!(o.top(), Some(Overlay::Help)));
        assert!(o.take_prompt().is_none(), "help is not a prompt");
        assert!(o.has_help());
        assert!(matches!(o.pop(), Some(Overlay::Help)));
        assert!(o.is_empty());
    }
}

//! Every thing an operator can ask the console to do, as one enum.
//!
//! Keys (see [`super::keys`]) and `:` commands map to these names; the update
//! ([`crate::console::update::update`]) carries them out. Keeping them in one place means the help screen, the key table and the
//! tests all speak the same vocabulary.

use crate::console::model::View;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Switch to a view (`1`..`5`).
    ShowView(View),
    /// Next view (`Tab`).
    NextView,
    /// Previous view (`Shift-Tab`).
    PrevView,
    /// Show or hide the keys of the current view (`?`).
    ToggleHelp,
    /// Open the `:` command line.
    OpenCommandLine,
    /// Quit; asks first when calls are held (`q`).
    Quit,
    /// Quit without asking (`Ctrl-C`, `:q!`).
    ForceQuit,
    /// Back out of whatever is open: prompt, help, detail, filter (`Esc`).
    Back,
    /// Move the selection up one row; in Live this pauses following.
    SelectUp,
    /// Move the selection down one row.
    SelectDown,
    /// Move the selection up one page.
    PageUp,
    /// Move the selection down one page.
    PageDown,
    /// Select the oldest row (`g`, `Home`).
    SelectFirst,
    /// Live: follow the newest call again (`F`, `End`).
    Follow,
    /// Live: edit the filter (`/`).
    OpenFilter,
    /// Live: clear the filter.
    ClearFilter,
    /// Open the detail of the selected call (`Enter`).
    OpenDetail,
    /// Holds: approve the selected held call (`a`).
    Approve,
    /// Holds: deny the selected held call, asking for a reason first (`d`).
    Deny,
    /// Text entry: edit the text being typed.
    Edit(tui_input::InputRequest),
    /// Text entry: accept what was typed (`Enter`).
    Submit,
    /// Confirmation: yes (`y`).
    Confirm,
    /// Confirmation: no (`n`).
    Cancel,
    /// Scroll the open detail pane by this many lines (`J`/`K`).
    ScrollDetail(i16),
    /// Apply a theme by name (`:theme NAME`).
    SetTheme(String),
    /// A call's tool (or the Policy view's row): ask `MAX/WINDOW` and limit it (`r`, `l`).
    LimitTool,
    /// A call's tool: write a deny rule for it, then review the write (`b`).
    BlockTool,
    /// Holds: approve the held call and write an allow rule for its tool (`A`).
    ApproveAndAllow,
    /// Policy view: the selected tool's rule allows it (`a`).
    AllowTool,
    /// Policy view: the selected tool's rule denies it (`d`).
    DenyTool,
    /// Policy view: the selected tool's calls wait for an operator (`h`).
    HoldTool,
    /// Policy view: the selected tool's rule has no limits (`u`).
    UnlimitTool,
    /// Policy view, on a shadow rule: enforce it (its `shadow` removed), then review the
    /// write (`P`).
    PromoteShadow,
    /// Policy view: the selected tool gets the rule `toolgate scan` suggests for its risk
    /// class (`s`); a rule of its own is replaced only on a second `s`.
    SuggestRule,
    /// Policy or Limits: show the diff and the what-if of the draft, and ask to write (`w`).
    ReviewWrite,
    /// Limits view: a new `max` for the selected counter (`m`).
    EditCounterMax,
    /// Limits view: a new `window` for the selected counter (`t`).
    EditCounterWindow,
    /// Tools view: accept the selected tool's new definition, re-pinning it on the gateway
    /// that reported it (`p`).
    AcceptPin,
    /// Tools view: keep the selected tool quarantined and stop listing it until its
    /// definition changes again (`x`).
    KeepQuarantined,
    /// Live: append the selected call, with the decision it got, to the `--cases` file as a
    /// `toolgate test` case (`T`).
    WriteCase,
    /// Policy view: open the rule editor on the selected row (`Enter`, `e`).
    OpenRuleEditor,
    /// Rule editor: next field (`Tab`, `↓`).
    EditorNext,
    /// Rule editor: previous field (`S-Tab`, `↑`).
    EditorPrev,
    /// Rule editor: the next (1) or previous (-1) choice, or move the cursor (`→`, `←`).
    EditorChoose(i8),
    /// Rule editor: `Enter` — add on the "+" rows, else the next field.
    EditorEnter,
    /// Rule editor: add a limit (`C-l`).
    EditorAddLimit,
    /// Rule editor: add a condition (`C-n`).
    EditorAddCondition,
    /// Rule editor: remove the limit or condition under the cursor (`C-d`).
    EditorRemove,
    /// Rule editor: the next path from the tool's inputSchema (`C-p`).
    EditorCompletePath,
    /// Rule editor: put the rule in the draft, then diff and y/n (`C-s`).
    EditorSave,
    /// Learned-policy review: accept the proposal shown (`a`).
    LearnAccept,
    /// Learned-policy review: reject the proposal shown (`r`).
    LearnReject,
    /// Learned-policy review: open the rule editor on the proposed rule; saving accepts it
    /// as edited (`e`).
    LearnEdit,
    /// Learned-policy review: widen the proposal (glob the tool name, loosen numeric
    /// ranges), or undo the widening (`w`).
    LearnWiden,
    /// Learned-policy review: skip the proposal, to decide on a later review (`s`).
    LearnSkip,
    /// Learned-policy review: back to the previous proposal (`b`, `←`).
    LearnPrevious,
    /// Learned-policy review: on to the next proposal, keeping this one's choice (`→`).
    LearnNext,
    /// Learned-policy review, at the summary: the diff of the result, then y/n (`Enter`,
    /// `w`).
    LearnWrite,
}

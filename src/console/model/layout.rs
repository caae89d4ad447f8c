//! The screen's layout in numbers: how many rows each part gets for a terminal of a given
//! size. The view splits the screen with these numbers and the update pages by them, so a
//! page is the same length whether or not a frame has been drawn since the last key.

/// The terminal's size, as the event loop reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub width: u16,
    pub height: u16,
}

impl Layout {
    /// Rows between the status bar and the bottom line (0 when the screen is too small for
    /// a view).
    pub fn body_rows(self) -> u16 {
        if self.height < 3 || self.width < 2 {
            0
        } else {
            self.height - 2
        }
    }

    /// Rows of the Live view's detail pane in a body `body` rows high, when the pane is
    /// open; `None` when there is no room for it.
    pub fn detail_rows(body: u16) -> Option<u16> {
        (body >= 10).then(|| (body / 2).clamp(6, 16))
    }

    /// Calls the Live list shows at once (inside its border): how far a page moves.
    pub fn live_page(self, detail_open: bool) -> usize {
        let body = self.body_rows();
        let list = match Self::detail_rows(body) {
            Some(d) if detail_open => body - d,
            _ => body,
        };
        list.saturating_sub(2) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_the_rows_the_live_list_has_inside_its_border() {
        let l = Layout {
            width: 110,
            height: 16,
        };
        assert_eq!(l.live_page(false), 12);
        assert_eq!(l.live_page(true), 5, "the detail pane takes half the body");
        assert_eq!(Layout::default().live_page(false), 0, "size not known yet");
    }
}

//! Label values with a bounded number of series.
//!
//! Tool names come from agents and scope keys from sessions: a label taking every value it
//! is given would let one agent grow the gateway's memory and every scraper's database
//! without end. A [`BoundedLabel`] keeps the first [`MAX_VALUES`] values it sees and maps
//! every later one to [`OTHER`].

use std::sync::Arc;

use crate::hashing::FastSet;

/// Distinct values one label keeps before the rest become [`OTHER`].
pub(crate) const MAX_VALUES: usize = 200;

/// The value that stands for every value beyond the first [`MAX_VALUES`].
pub(crate) const OTHER: &str = "other";

/// The values one label has taken, at most [`MAX_VALUES`] of them.
#[derive(Debug, Default)]
pub(crate) struct BoundedLabel {
    /// foldhash: a label is looked up several times per call, and the set is bounded.
    kept: FastSet<Arc<str>>,
    other: Option<Arc<str>>,
}

impl BoundedLabel {
    /// The value to record for `value`: itself while there is room or when already kept,
    /// [`OTHER`] beyond that.
    pub(crate) fn value(&mut self, value: &str) -> Arc<str> {
        if let Some(kept) = self.kept.get(value) {
            return kept.clone();
        }
        if self.kept.len() < MAX_VALUES && value != OTHER {
            let kept: Arc<str> = Arc::from(value);
            self.kept.insert(kept.clone());
            return kept;
        }
        self.other.get_or_insert_with(|| Arc::from(OTHER)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_the_cap_become_other_and_kept_values_stay_themselves() {
        let mut label = BoundedLabel::default();
        for n in 0..MAX_VALUES {
            assert_eq!(&*label.value(&format!("tool{n}")), format!("tool{n}"));
        }
        assert_eq!(&*label.value("one-too-many"), OTHER);
        assert_eq!(&*label.value("tool7"), "tool7");
        assert_eq!(&*label.value("yet-another"), OTHER);
    }
}

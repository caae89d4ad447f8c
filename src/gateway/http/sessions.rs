//! The links `serve` has open — MCP sessions by id and 2026-07-28 stateless links by
//! (server, grant) — and the caps on them: so many per grant, so many in all.
//!
//! A link may cost a server process, so a place is taken before one is started: [`Sessions::
//! reserve`] checks both caps and counts the new link under one lock, and the
//! [`Reservation`] gives the place back if it is dropped before the link is added (the
//! server could not be started). Many `initialize` requests arriving at once therefore never
//! get past a cap, however they interleave. Ended links (their upstream gone) are forgotten
//! before a cap refuses anyone, so a grant whose servers died is not locked out until the
//! reaper runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::link::CoreLink;
use crate::hashing::FastMap;
use crate::sync::lock;
use crate::wire::SessionCap;

/// How often, at most, refusals of one grant at one cap are reported (logged and published).
pub(crate) const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(5);

/// How many links may be open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionCaps {
    pub per_grant: usize,
    pub total: usize,
}

/// A cap refused a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub cap: SessionCap,
    pub max: usize,
}

/// Refusals to report: the count since the last report, per (grant, cap).
#[derive(Debug, Default)]
struct RefusalLog {
    since_report: HashMap<(String, SessionCap), (u64, Option<Instant>)>,
}

#[derive(Default)]
struct Table {
    /// Looked up on every request (bounded by the caps), so hashed with [`FastMap`].
    sessions: FastMap<String, Arc<CoreLink>>,
    stateless: HashMap<(String, String), Arc<CoreLink>>,
    /// Links open or reserved, per grant.
    per_grant: HashMap<String, usize>,
    /// Links open or reserved in all.
    total: usize,
}

impl Table {
    fn release(&mut self, grant: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_grant.get_mut(grant) {
            *n -= 1;
            if *n == 0 {
                self.per_grant.remove(grant);
            }
        }
    }

    /// Forgets ended links; returns them.
    fn forget(&mut self, stale: impl Fn(&CoreLink) -> bool) -> Vec<Arc<CoreLink>> {
        let mut gone = Vec::new();
        self.sessions.retain(|_, link| {
            let keep = !stale(link);
            if !keep {
                gone.push(link.clone());
            }
            keep
        });
        self.stateless.retain(|_, link| {
            let keep = !stale(link);
            if !keep {
                gone.push(link.clone());
            }
            keep
        });
        for link in &gone {
            self.release(&link.grant);
        }
        gone
    }

    fn refusal(&self, grant: &str, caps: SessionCaps) -> Option<Refused> {
        if self.per_grant.get(grant).copied().unwrap_or(0) >= caps.per_grant {
            return Some(Refused {
                cap: SessionCap::Grant,
                max: caps.per_grant,
            });
        }
        (self.total >= caps.total).then_some(Refused {
            cap: SessionCap::Gateway,
            max: caps.total,
        })
    }
}

/// The open links and their caps.
pub(crate) struct Sessions {
    caps: SessionCaps,
    table: Mutex<Table>,
    refusals: Mutex<RefusalLog>,
}

/// A place for one link of `grant`, counted against the caps until the link is added or
/// this is dropped.
#[must_use = "a reservation is given back when dropped"]
pub(crate) struct Reservation<'a> {
    sessions: &'a Sessions,
    grant: String,
    taken: bool,
}

impl Reservation<'_> {
    /// Adds the MCP session `id`, in the place reserved.
    pub(crate) fn open_session(mut self, id: String, link: Arc<CoreLink>) {
        self.taken = true;
        lock(&self.sessions.table).sessions.insert(id, link);
    }

    /// Adds the stateless link of (`server`, this grant), in the place reserved.
    pub(crate) fn open_stateless(mut self, server: &str, link: Arc<CoreLink>) {
        self.taken = true;
        let key = (server.to_owned(), self.grant.clone());
        let mut table = lock(&self.sessions.table);
        if let Some(old) = table.stateless.insert(key, link) {
            // Only an ended link is ever replaced; its place is this one's.
            table.release(&old.grant);
            old.close();
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.taken {
            lock(&self.sessions.table).release(&self.grant);
        }
    }
}

impl Sessions {
    pub(crate) fn new(caps: SessionCaps) -> Sessions {
        Sessions {
            caps,
            table: Mutex::new(Table::default()),
            refusals: Mutex::new(RefusalLog::default()),
        }
    }

    /// Takes a place for a new link of `grant`, or says which cap refuses it.
    pub(crate) fn reserve(&self, grant: &str) -> Result<Reservation<'_>, Refused> {
        let mut table = lock(&self.table);
        if table.refusal(grant, self.caps).is_some() {
            for link in table.forget(|link| link.ended()) {
                link.close();
            }
        }
        if let Some(refused) = table.refusal(grant, self.caps) {
            return Err(refused);
        }
        table.total += 1;
        *table.per_grant.entry(grant.to_owned()).or_default() += 1;
        Ok(Reservation {
            sessions: self,
            grant: grant.to_owned(),
            taken: false,
        })
    }

    /// The MCP session `id`.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<CoreLink>> {
        lock(&self.table).sessions.get(id).cloned()
    }

    /// The stateless link of (`server`, `grant`), unless it has ended.
    pub(crate) fn stateless(&self, server: &str, grant: &str) -> Option<Arc<CoreLink>> {
        let key = (server.to_owned(), grant.to_owned());
        lock(&self.table)
            .stateless
            .get(&key)
            .filter(|link| !link.ended())
            .cloned()
    }

    /// Removes the MCP session `id` and returns it (the caller closes it).
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<CoreLink>> {
        let mut table = lock(&self.table);
        let link = table.sessions.remove(id)?;
        table.release(&link.grant);
        Some(link)
    }

    /// Removes every link for which `stale` holds and returns them (the caller closes them).
    pub(crate) fn remove_if(&self, stale: impl Fn(&CoreLink) -> bool) -> Vec<Arc<CoreLink>> {
        lock(&self.table).forget(stale)
    }

    /// Removes every link and returns them (the caller closes them).
    pub(crate) fn drain(&self) -> Vec<Arc<CoreLink>> {
        self.remove_if(|_| true)
    }

    /// How many links `grant` has open or reserved.
    #[cfg(test)]
    fn count_of(&self, grant: &str) -> usize {
        lock(&self.table).per_grant.get(grant).copied().unwrap_or(0)
    }

    /// Counts a refusal of `grant` at `cap`; returns how many to report now, if it is time
    /// to report (the first refusal, then at most every [`REFUSAL_REPORT_EVERY`]).
    pub(crate) fn note_refusal(&self, grant: &str, cap: SessionCap, now: Instant) -> Option<u64> {
        let mut log = lock(&self.refusals);
        let (count, last) = log
            .since_report
            .entry((grant.to_owned(), cap))
            .or_insert((0, None));
        *count += 1;
        if last.is_some_and(|at| now.duration_since(at) < REFUSAL_REPORT_EVERY) {
            return None;
        }
        let report = *count;
        *count = 0;
        *last = Some(now);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(per_grant: usize, total: usize) -> Sessions {
        Sessions::new(SessionCaps { per_grant, total })
    }

    #[test]
    fn a_grant_at_its_cap_is_refused_while_another_grant_still_gets_a_place() {
        let sessions = caps(2, 10);
        let a1 = sessions.reserve("a").unwrap();
        let a2 = sessions.reserve("a").unwrap();
        let refused = sessions.reserve("a").err().unwrap();
        assert_eq!(
            refused,
            Refused {
                cap: SessionCap::Grant,
                max: 2
            }
        );
        assert!(sessions.reserve("b").is_ok());
        drop((a1, a2));
    }

    #[test]
    fn the_gateway_cap_counts_every_grant() {
        let sessions = caps(5, 3);
        let _held: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|g| sessions.reserve(g).unwrap())
            .collect();
        let refused = sessions.reserve("d").err().unwrap();
        assert_eq!(refused.cap, SessionCap::Gateway);
        assert_eq!(refused.max, 3);
    }

    #[test]
    fn a_reservation_dropped_unused_gives_its_place_back() {
        let sessions = caps(1, 1);
        let place = sessions.reserve("a").unwrap();
        assert!(sessions.reserve("a").is_err());
        drop(place);
        assert_eq!(sessions.count_of("a"), 0);
        assert!(sessions.reserve("a").is_ok());
    }

    #[test]
    fn concurrent_reservations_never_pass_a_cap() {
        let sessions = Arc::new(caps(16, 512));
        let granted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Ok(place) = sessions.reserve("a") {
                            granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            // Kept: an opened session holds its place.
                            std::mem::forget(place);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 16);
        assert_eq!(sessions.count_of("a"), 16);
    }

    #[test]
    fn refusals_are_reported_first_then_at_most_every_few_seconds_with_a_count() {
        let sessions = caps(1, 1);
        let t0 = Instant::now();
        assert_eq!(sessions.note_refusal("a", SessionCap::Grant, t0), Some(1));
        let soon = t0 + Duration::from_millis(10);
        assert_eq!(sessions.note_refusal("a", SessionCap::Grant, soon), None);
        assert_eq!(sessions.note_refusal("a", SessionCap::Grant, soon), None);
        // Another grant is reported on its own.
        assert_eq!(sessions.note_refusal("b", SessionCap::Grant, soon), Some(1));
        let later = t0 + REFUSAL_REPORT_EVERY;
        assert_eq!(
            sessions.note_refusal("a", SessionCap::Grant, later),
            Some(3)
        );
    }
}

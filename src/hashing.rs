//! The hasher of the maps on a call's path (ids in flight, the hub's recent calls, a policy's
//! exact tool names, whose keys come from the policy file and are bounded by it): foldhash,
//! several times cheaper than std's SipHash on short keys. Its seeds come from the OS's
//! random source, once per process and again per map, so a client cannot choose ids that
//! collide without knowing them; the maps keyed by a client's ids are also bounded in
//! size (at most [`crate::gateway::core::MAX_IN_FLIGHT`] entries), so even colliding ids
//! cost a bounded scan, never a quadratic blow-up.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};

/// The process's seed, shared by every map.
static SHARED: LazyLock<SharedSeed> = LazyLock::new(|| SharedSeed::from_u64(rand::random()));

/// foldhash with a random seed of its own (see the module's doc).
#[derive(Clone, Debug)]
pub(crate) struct Seeded(SeedableRandomState);

impl Default for Seeded {
    fn default() -> Self {
        Seeded(SeedableRandomState::with_seed(rand::random(), &SHARED))
    }
}

impl BuildHasher for Seeded {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> FoldHasher<'static> {
        self.0.build_hasher()
    }
}

/// A `HashMap` hashed with [`Seeded`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, Seeded>;
/// A `HashSet` hashed with [`Seeded`].
pub(crate) type FastSet<T> = std::collections::HashSet<T, Seeded>;

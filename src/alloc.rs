//! The binary's global allocator: small blocks from a fast allocator, large ones from the
//! system's.
//!
//! A gateway allocates and frees many small buffers for every message (lines, ids, events,
//! audit records), and glibc's `malloc`/`free` are a visible share of its CPU per call (issue
//! 15). mimalloc alone is faster there, but it keeps freed pages for a while (its purge delay,
//! a second in mimalloc 3), and a 96 MiB message then left `serve` tens of MiB above its
//! peak, which the attack suite's flat-memory checks refuse. So the owner of a block is chosen by its size: below [`Split`]'s `THRESHOLD`
//! the fast allocator, from it up the system's (glibc maps such blocks on their own and
//! unmaps them on free, so an oversized message costs memory only while it lives).
//!
//! No header is needed to find a block's owner again: `dealloc` and `realloc` receive the
//! layout the block was made with (the `GlobalAlloc` contract), and its size names the side.
//! A `realloc` that crosses the threshold allocates on the other side, copies and frees.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::ptr;

use libmimalloc_sys as mi;

/// mimalloc as a `GlobalAlloc`, asking for an alignment only when a block needs more than
/// every mimalloc block has anyway.
///
/// Every block mimalloc hands out is aligned to a word (its size classes are whole words), so
/// `mi_malloc` serves layouts aligned to at most [`Mimalloc::WORD`]. `mi_malloc_aligned` would
/// serve them too, but it takes a slower path for every block over 1 KiB whose size is not a
/// power of two (it over-allocates to be sure of the alignment): that path was a visible share
/// of `serve`'s instructions.
pub struct Mimalloc;

impl Mimalloc {
    const WORD: usize = std::mem::size_of::<usize>();
}

// SAFETY: the functions called are mimalloc's malloc family, which return null or a block of at
// least the size asked for; `mi_malloc`/`mi_zalloc`/`mi_realloc` only for alignments up to a
// word (which every mimalloc block has), the `_aligned` forms otherwise, with the layout's
// alignment. `mi_free` takes any block of either form, and `mi_realloc`'s result keeps a word's
// alignment, so a block made by one form may be resized by the same rule later.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's note.
        unsafe {
            if layout.align() <= Self::WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's note.
        unsafe {
            if layout.align() <= Self::WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` is a live block from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live mimalloc block; the new block has the layout's alignment
        // (see the impl's note); on null the old block is left as it was.
        unsafe {
            if layout.align() <= Self::WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Blocks of fewer than `THRESHOLD` bytes come from `Small`, the rest from the system's
/// allocator. `THRESHOLD` must be above zero (a zero-sized request always goes to `Small`).
pub struct Split<Small, const THRESHOLD: usize> {
    small: Small,
}

impl<Small, const THRESHOLD: usize> Split<Small, THRESHOLD> {
    pub const fn new(small: Small) -> Self {
        Split { small }
    }

    /// Which side owns a block of `size` bytes: the one place the rule is written.
    #[inline(always)]
    const fn is_small(size: usize) -> bool {
        size < THRESHOLD
    }
}

// SAFETY: every block is made and given back by the same side, because both ends choose the
// side by `is_small(size)` of the same layout: `alloc`/`alloc_zeroed` by the requested size,
// `dealloc` by the size the caller must pass (the size it was allocated or last reallocated
// with), and `realloc` returns a block whose owner is `is_small(new_size)`, the size the caller
// passes from then on. Each side is itself a `GlobalAlloc`, so alignment and the other
// guarantees hold for the blocks it hands out; a null from either side is passed through.
unsafe impl<Small: GlobalAlloc, const THRESHOLD: usize> GlobalAlloc for Split<Small, THRESHOLD> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout is valid and non-zero-sized; forwarded as it is.
        unsafe {
            if Self::is_small(layout.size()) {
                self.small.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if Self::is_small(layout.size()) {
                self.small.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`, so from the side that
        // `is_small(layout.size())` names (see the impl's note).
        unsafe {
            if Self::is_small(layout.size()) {
                self.small.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let was_small = Self::is_small(layout.size());
        if was_small == Self::is_small(new_size) {
            // SAFETY: same side made the block; the caller's guarantees pass through.
            return unsafe {
                if was_small {
                    self.small.realloc(ptr, layout, new_size)
                } else {
                    System.realloc(ptr, layout, new_size)
                }
            };
        }
        // SAFETY: the caller guarantees that `new_size`, rounded up to `layout.align()`, does
        // not overflow `isize`, which is what `Layout` requires of it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` is valid and non-zero-sized (`new_size > 0` is the caller's
        // promise); the new block is the other side's, as `is_small(new_size)` says.
        let new = unsafe {
            if was_small {
                System.alloc(new_layout)
            } else {
                self.small.alloc(new_layout)
            }
        };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct and at least this long; the old one is
            // freed only after the copy, by the side that made it, and only on success (on
            // failure `realloc` must leave it to the caller).
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    /// A small side that counts what it holds, to see which side owns a block.
    struct Counting {
        live: Cell<isize>,
    }

    // SAFETY: forwards to the system's allocator; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.live.set(self.live.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.live.set(self.live.get() - 1);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    const LIMIT: usize = 4096;
    type Tested = Split<Counting, LIMIT>;

    fn tested() -> Tested {
        Split::new(Counting { live: Cell::new(0) })
    }

    fn fill(ptr: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            unsafe { ptr.add(i).write(seed.wrapping_add(i as u8)) }
        }
    }

    fn check(ptr: *const u8, len: usize, seed: u8) {
        for i in 0..len {
            assert_eq!(
                unsafe { ptr.add(i).read() },
                seed.wrapping_add(i as u8),
                "byte {i}"
            );
        }
    }

    /// Grows and shrinks one block through the given sizes, checking the owner, the alignment
    /// and that the contents up to the smaller size survive each step.
    fn walk(split: &Tested, align: usize, sizes: &[usize]) {
        let mut layout = Layout::from_size_align(sizes[0], align).unwrap();
        let mut ptr = unsafe { split.alloc(layout) };
        assert!(!ptr.is_null());
        fill(ptr, layout.size(), 7);
        for &size in &sizes[1..] {
            assert_eq!(split.small.live.get(), isize::from(layout.size() < LIMIT));
            ptr = unsafe { split.realloc(ptr, layout, size) };
            assert!(!ptr.is_null());
            assert_eq!(ptr as usize % align, 0, "alignment {align} at size {size}");
            check(ptr, layout.size().min(size), 7);
            layout = Layout::from_size_align(size, align).unwrap();
            fill(ptr, size, 7);
            assert_eq!(
                split.small.live.get(),
                isize::from(size < LIMIT),
                "size {size}"
            );
        }
        unsafe { split.dealloc(ptr, layout) };
        assert_eq!(split.small.live.get(), 0);
    }

    #[test]
    fn realloc_across_the_threshold_both_ways_keeps_contents_and_alignment() {
        let split = tested();
        for align in [1, 8, 16, 64, 4096, 65536] {
            walk(
                &split,
                align,
                &[
                    100,
                    LIMIT - 1,
                    LIMIT,
                    3 * LIMIT,
                    LIMIT - 1,
                    10,
                    5 * LIMIT,
                    1,
                ],
            );
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        let split = tested();
        for size in [1, LIMIT - 1, LIMIT, 10 * LIMIT] {
            let layout = Layout::from_size_align(size, 32).unwrap();
            let ptr = unsafe { split.alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            assert!((0..size).all(|i| unsafe { ptr.add(i).read() } == 0));
            assert_eq!(split.small.live.get(), isize::from(size < LIMIT));
            unsafe { split.dealloc(ptr, layout) };
        }
        assert_eq!(split.small.live.get(), 0);
    }

    /// The real pair the binary uses, across its threshold.
    #[test]
    fn the_binarys_allocator_moves_blocks_across_its_threshold() {
        let split = &crate::ALLOCATOR;
        for align in [1, 2, 8, 16, 64, 4096] {
            let mut layout = Layout::from_size_align(1000, align).unwrap();
            let mut ptr = unsafe { split.alloc(layout) };
            fill(ptr, layout.size(), 3);
            for size in [crate::SMALL_BELOW + 1, 300, crate::SMALL_BELOW * 3, 20] {
                ptr = unsafe { split.realloc(ptr, layout, size) };
                assert!(!ptr.is_null());
                assert_eq!(ptr as usize % align, 0);
                check(ptr, layout.size().min(size), 3);
                layout = Layout::from_size_align(size, align).unwrap();
                fill(ptr, size, 3);
            }
            unsafe { split.dealloc(ptr, layout) };
        }
    }

    proptest! {
        /// mimalloc's two forms, word-aligned and over a word, keep the alignment and the
        /// contents through growing and shrinking.
        #[test]
        fn mimalloc_keeps_alignment_and_contents(
            align_log in 0u32..13,
            sizes in proptest::collection::vec(1usize..20_000, 1..12),
        ) {
            let align = 1usize << align_log;
            let mut layout = Layout::from_size_align(sizes[0], align).unwrap();
            let mut ptr = unsafe { Mimalloc.alloc(layout) };
            prop_assert!(!ptr.is_null());
            fill(ptr, layout.size(), 5);
            for &size in &sizes[1..] {
                ptr = unsafe { Mimalloc.realloc(ptr, layout, size) };
                prop_assert!(!ptr.is_null());
                prop_assert_eq!(ptr as usize % align, 0);
                check(ptr, layout.size().min(size), 5);
                layout = Layout::from_size_align(size, align).unwrap();
                fill(ptr, size, 5);
            }
            unsafe { Mimalloc.dealloc(ptr, layout) };
            let zeroed = unsafe { Mimalloc.alloc_zeroed(layout) };
            prop_assert_eq!(zeroed as usize % align, 0);
            let all_zero = (0..layout.size()).all(|i| unsafe { zeroed.add(i).read() } == 0);
            prop_assert!(all_zero);
            unsafe { Mimalloc.dealloc(zeroed, layout) };
        }


        #[test]
        fn random_walks_keep_contents_and_owners(
            align_log in 0u32..13,
            sizes in proptest::collection::vec(1usize..4 * LIMIT, 1..12),
        ) {
            walk(&tested(), 1 << align_log, &sizes);
        }
    }
}

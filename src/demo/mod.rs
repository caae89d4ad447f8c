//! The embedded demo.
//!
//! SKELETON: lands with issue 7.

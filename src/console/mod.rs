//! The ratatui console.
//!
//! SKELETON: lands with issue 5.

//! The enforcement core and its transports.
//!
//! SKELETON: lands with issue 3.

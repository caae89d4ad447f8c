//! What the console needs from a terminal beyond ratatui's `Backend`: the bell.
//!
//! The real terminal gets a BEL byte; the test backend counts nothing (tests read
//! `State::bells_rung`, which the event loop bumps for every bell it rings).

use std::io::{self, Write};

use ratatui::backend::{CrosstermBackend, TestBackend};

/// A terminal that can ring its bell.
pub trait Bell {
    fn ring(&mut self) -> io::Result<()>;
}

impl<W: Write> Bell for CrosstermBackend<W> {
    fn ring(&mut self) -> io::Result<()> {
        self.write_all(b"\x07")?;
        self.flush()
    }
}

impl Bell for TestBackend {
    fn ring(&mut self) -> io::Result<()> {
        Ok(())
    }
}

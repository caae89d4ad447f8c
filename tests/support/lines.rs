//! A child's output as lines, read on a thread of their own so a test can wait for the next
//! one with a deadline instead of blocking forever on a broken build.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;

/// Lines from `output` (a child's stdout or stderr), readable with `recv_timeout`. The thread
/// ends with the stream or when the receiver is dropped.
pub fn line_reader(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

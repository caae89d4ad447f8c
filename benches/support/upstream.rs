//! The do-nothing MCP server the process benches put behind the gateway (run as the bench
//! binary itself with `--trivial-upstream`): it answers every request at once with a one-line
//! tool result, so what a bench measures is the gateway, not a server.

use std::io::{BufRead, BufReader, BufWriter, Write};

/// Answers every request on stdin with a one-line tool result on stdout until stdin ends.
pub fn trivial_upstream() {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut reader = BufReader::new(std::io::stdin().lock());
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(env) = serde_json::from_str::<Envelope<'_>>(&line) else {
            continue;
        };
        let Some(id) = env.id else { continue };
        let _ = writeln!(
            out,
            r#"{{"jsonrpc":"2.0","id":{},"result":{{"content":[{{"type":"text","text":"ok"}}]}}}}"#,
            id.get()
        );
        // Flush only when no more input is already buffered: answer bursts in one write.
        if !reader.buffer().contains(&b'\n') && out.flush().is_err() {
            return;
        }
    }
}

//! The audit record's arguments HMAC alone, on the real CPU (issue 15).
//!
//! `scripts/instructions-per-call` counts about 6.9k instructions per call for this HMAC, but
//! valgrind does not report the CPU's SHA extensions, so under it `sha2` runs its portable
//! code. This bench times the same work natively: HMAC-SHA-256 under a 32-byte key whose
//! keyed state is set up once and cloned per call, over the canonical arguments of the
//! script's call, as `AuditKey::args_hmac_hex` does. It prints whether the CPU has the SHA
//! extensions `sha2` picks at run time.
//!
//! Run: `cargo bench --bench audit_hmac`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

fn hmac(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    println!(
        "summary: SHA extensions on this CPU: {}",
        std::arch::is_x86_feature_detected!("sha")
    );
    let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&[7; 32]).expect("any key length");
    // What `canonical` writes for the script's `{"message":"hello"}`.
    let args = br#"{"message":"hello"}"#;
    c.bench_function("audit_hmac/keyed state cloned, 19-byte arguments", |b| {
        b.iter(|| {
            let mut mac = keyed.clone();
            mac.update(black_box(args));
            mac.finalize().into_bytes()
        })
    });
}

criterion_group!(benches, hmac);
criterion_main!(benches);

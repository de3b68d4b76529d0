//! Replays the fuzz corpus (fuzz/corpus/control_protocol: the seeds and what the fuzzer kept)
//! through the same harness as the libFuzzer target, checking its invariants after every input.

use std::{collections::BTreeSet, path::Path};

use anyhow::{ensure, Context as _, Result};
use reuseport_fuzz::{seeds, Harness, Summary};

fn corpus() -> Result<Vec<(String, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/control_protocol");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, std::fs::read(&path)?));
    }
    files.sort();
    Ok(files)
}

#[test]
fn every_corpus_input_keeps_the_daemon_whole() -> Result<()> {
    let files = corpus()?;
    let mut harness = Harness::start()?;
    let mut total = Summary::default();
    for (name, data) in &files {
        let summary = harness
            .run(data)
            .with_context(|| format!("corpus input {name}"))?;
        total.add(&summary);
    }
    // The seeds reach every refusal a client can provoke alone, and real registrations.
    let codes: BTreeSet<&str> = total.codes.keys().map(String::as_str).collect();
    ensure!(
        !codes.contains("io"),
        "a client's mistake was refused as an I/O error: {:?}",
        total.codes
    );
    for code in [
        "bad_request",
        "too_large",
        "truncated",
        "fd_missing",
        "too_many_fds",
        "unexpected_fd",
        "unknown_group",
        "ambiguous_group",
        "unknown_policy",
        "no_reuseport",
        "not_listening",
        "wrong_protocol",
        "slot_out_of_range",
        "slot_empty",
        "invalid_weight",
        "unsupported_socket",
    ] {
        ensure!(codes.contains(code), "no input got {code}: {codes:?}");
    }
    ensure!(
        total.registered >= 10,
        "only {} registrations taken",
        total.registered
    );
    eprintln!(
        "{} inputs: {} replies, {} registrations, refusals {:?}",
        files.len(),
        total.replies,
        total.registered,
        total.codes
    );
    Ok(())
}

#[test]
fn the_seeds_in_the_corpus_are_the_current_ones() -> Result<()> {
    let files = corpus()?;
    for (name, bytes) in seeds::all() {
        let file = format!("seed-{name}");
        ensure!(
            files.iter().any(|(n, b)| *n == file && *b == bytes),
            "{file} is missing or stale: cargo run -p reuseport-fuzz --bin seed-corpus"
        );
    }
    Ok(())
}

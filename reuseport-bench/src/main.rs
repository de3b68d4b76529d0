//! `reuseport-bench [SCENARIO...]`: runs benchmarks in a fresh network namespace and writes
//! Markdown and CSV results.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use reuseport_bench::cli::Cli;

fn main() -> ExitCode {
    // Parsing first keeps --help and --list usable without root; it starts no thread.
    let cli = Cli::parse();
    if cli.list {
        for s in reuseport_bench::registry() {
            println!("{:<10} {}", s.name(), s.about());
        }
        return ExitCode::SUCCESS;
    }
    // Before any thread exists: the namespace belongs to this thread, and only threads started
    // after it inherit it. Every listener and client then lives on the private loopback.
    if let Err(e) = reuseport_steer::netns::enter_new() {
        eprintln!("reuseport-bench: cannot create a network namespace: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reuseport-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    if cli.doc_only {
        return write_doc(cli);
    }
    let scenarios = cli.selected()?;
    let options = cli.options();
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    std::fs::write(
        cli.out.join(reuseport_bench::doc::RUN_INFO),
        reuseport_bench::doc::run_info(&args, cli.note.as_deref()),
    )
    .context("writing the run's facts")?;
    for scenario in scenarios {
        eprintln!("reuseport-bench: running {}", scenario.name());
        let report = scenario
            .run(&options)
            .with_context(|| format!("scenario {}", scenario.name()))?;
        println!("{}", report.markdown());
        let files = report.write(&cli.out)?;
        for file in files {
            eprintln!("reuseport-bench: wrote {}", file.display());
        }
    }
    let info = cli.out.join(reuseport_bench::doc::RUN_INFO);
    let mut facts = std::fs::read_to_string(&info).unwrap_or_default();
    facts.push_str(&reuseport_bench::doc::run_end());
    std::fs::write(&info, facts).context("writing the run's facts")?;
    if cli.doc.is_some() {
        write_doc(cli)?;
    }
    Ok(())
}

fn write_doc(cli: &Cli) -> Result<()> {
    if let Some(doc) = &cli.doc {
        for file in reuseport_bench::doc::write(&cli.out, doc)? {
            eprintln!("reuseport-bench: wrote {}", file.display());
        }
    }
    Ok(())
}

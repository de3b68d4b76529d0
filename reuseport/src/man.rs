//! The man pages, generated from the command line definition itself (clap_mangen) so they
//! cannot drift from `--help`: `reuseport.1` with an EXIT STATUS section, and one page per
//! command (`reuseport-status.1`, `reuseport-policy-get.1`, ...). `cargo xtask man` runs this
//! through the hidden `reuseport man --out DIR`.

use std::{fs, io::Write as _, path::Path};

use anyhow::Context as _;
use clap_mangen::{
    roff::{bold, roman, Roff},
    Man,
};

use crate::exit::Exit;

/// Writes every page into `dir` (created if missing).
pub fn write_all(mut command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Building gives the subcommands their display names (`reuseport-policy-get`).
    // The plain version: a page does not change with the embedded object.
    command = command
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    command.build();
    write_main(&command, dir)?;
    let mut pending: Vec<clap::Command> = command.get_subcommands().cloned().collect();
    while let Some(sub) = pending.pop() {
        if sub.is_hide_set() {
            continue;
        }
        pending.extend(sub.get_subcommands().cloned());
        let path = Man::new(sub)
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `reuseport.1`: clap_mangen's sections, with the exit statuses under their usual heading
/// instead of its generic EXTRA (the `--help` epilogue).
fn write_main(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let man = Man::new(command.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut exit = Roff::new();
    exit.control("SH", ["EXIT STATUS"]);
    for status in Exit::ALL {
        exit.control("TP", [])
            .text([bold(status.code().to_string())])
            .text([roman(status.meaning())]);
    }
    exit.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    fs::File::create(&path)
        .and_then(|mut f| f.write_all(&page))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

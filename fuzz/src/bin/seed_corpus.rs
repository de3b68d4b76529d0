//! Writes the seed inputs ([`reuseport_fuzz::seeds`]) into corpus/control_protocol/ as
//! `seed-<name>`, replacing older versions; entries the fuzzer added are left alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/control_protocol");
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            std::fs::remove_file(path)?;
        }
    }
    let seeds = reuseport_fuzz::seeds::all();
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("{} seeds written to {}", seeds.len(), dir.display());
    Ok(())
}

//! Builds the kernel program (`reuseport-ebpf`) with the nightly toolchain and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what
//! this needs.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("reuseport-steer has no parent directory"))?;
    let ebpf_dir = root.join("reuseport-ebpf");
    let common_dir = root.join("reuseport-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    // reuseport-ebpf is a workspace of its own (it needs nightly cargo features); aya-build runs
    // `cargo build --package` in the current directory, so build from there.
    std::env::set_current_dir(&ebpf_dir)
        .with_context(|| format!("cannot enter {}", ebpf_dir.display()))?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "reuseport-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF program failed; run `cargo xtask setup` first (rust-src for nightly and bpf-linker)")
}

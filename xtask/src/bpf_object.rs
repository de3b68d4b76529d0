//! Checks the built eBPF object for what the source cannot show: the round-robin and weighted
//! tickets must be atomic fetch-and-adds. LLVM turns an atomic add whose old value it thinks
//! unused into a plain (non-fetching) atomic add, whose "result" register is garbage, and
//! round-robin would silently stop being exact.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{bail, ensure, Context as _, Result};

/// `BPF_STX | BPF_ATOMIC` with size DW and W.
const ATOMIC_DW: u8 = 0xdb;
const ATOMIC_W: u8 = 0xc3;
/// `BPF_LD | BPF_IMM | BPF_DW`: a 16-byte instruction.
const LDDW: u8 = 0x18;
const BPF_ADD: i32 = 0x00;
const BPF_FETCH: i32 = 0x01;
/// Sections of the object's programs (`#[sk_reuseport]` and `#[sk_reuseport(migrate)]`).
const PROGRAM_PREFIX: &str = "sk_reuseport";

/// Atomic adds found in some code.
#[derive(Debug, Default, PartialEq, Eq)]
struct AtomicAdds {
    fetching: usize,
    plain: usize,
}

/// Checks the newest object reuseport-user's build script produced under `target_dir`.
pub fn check(target_dir: &Path) -> Result<()> {
    let object = newest_object(target_dir)?;
    let data = fs::read(&object).with_context(|| format!("cannot read {}", object.display()))?;
    let sections = code_sections(&data)
        .with_context(|| format!("{} is not a 64-bit little-endian ELF", object.display()))?;
    let mut programs = 0;
    for (name, code) in &sections {
        let adds = atomic_adds(code);
        ensure!(
            adds.plain == 0,
            "{}: section {name} has {} non-fetching atomic add(s): a ticket's old value is \
             garbage there, round-robin is not exact. Use a SeqCst fetch-and-add in \
             reuseport-ebpf (see `ticket`)",
            object.display(),
            adds.plain
        );
        if name.starts_with(PROGRAM_PREFIX) {
            programs += 1;
            ensure!(
                adds.fetching > 0,
                "{}: program section {name} has no atomic fetch-and-add: the policies' shared \
                 ticket is gone (or was compiled away)",
                object.display()
            );
        }
    }
    ensure!(
        programs >= 2,
        "{}: expected the select and migrate programs, found {programs} program section(s)",
        object.display()
    );
    eprintln!(
        "{}: {programs} programs, tickets are atomic fetch-and-adds",
        object.display()
    );
    Ok(())
}

/// `<target>/<profile>/build/reuseport-user-*/out/reuseport`, the most recently written.
fn newest_object(target_dir: &Path) -> Result<PathBuf> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for profile in ["debug", "release"] {
        let Ok(builds) = fs::read_dir(target_dir.join(profile).join("build")) else {
            continue;
        };
        for build in builds.flatten() {
            if !build
                .file_name()
                .to_string_lossy()
                .starts_with("reuseport-user-")
            {
                continue;
            }
            let path = build.path().join("out").join("reuseport");
            if let Ok(modified) = fs::metadata(&path).and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no eBPF object under {}/*/build/reuseport-user-*/out: build the workspace first",
            target_dir.display()
        ),
    }
}

/// The executable sections of an ELF64 little-endian object, by name.
fn code_sections(data: &[u8]) -> Option<Vec<(String, &[u8])>> {
    const SHF_EXECINSTR: u64 = 0x4;
    const SHDR_SIZE: usize = 64;
    if data.get(..4)? != b"\x7fELF" || *data.get(4)? != 2 || *data.get(5)? != 1 {
        return None;
    }
    let shoff = usize::try_from(u64_at(data, 0x28)?).ok()?;
    let shnum = usize::from(u16_at(data, 0x3c)?);
    let shstrndx = usize::from(u16_at(data, 0x3e)?);
    let header = |i: usize| data.get(shoff + i * SHDR_SIZE..shoff + (i + 1) * SHDR_SIZE);
    let body = |h: &[u8]| -> Option<&[u8]> {
        let offset = usize::try_from(u64_at(h, 0x18)?).ok()?;
        let size = usize::try_from(u64_at(h, 0x20)?).ok()?;
        data.get(offset..offset.checked_add(size)?)
    };
    let names = body(header(shstrndx)?)?;
    let mut sections = Vec::new();
    for i in 0..shnum {
        let h = header(i)?;
        if u64_at(h, 0x08)? & SHF_EXECINSTR == 0 {
            continue;
        }
        let name_at = usize::try_from(u32_at(h, 0)?).ok()?;
        let name = names.get(name_at..)?;
        let end = name.iter().position(|&b| b == 0)?;
        let name = String::from_utf8_lossy(&name[..end]).into_owned();
        sections.push((name, body(h)?));
    }
    Some(sections)
}

/// Counts the atomic adds of BPF code, fetching or not.
fn atomic_adds(code: &[u8]) -> AtomicAdds {
    let mut adds = AtomicAdds::default();
    let mut i = 0;
    while let Some(insn) = code.get(i..i + 8) {
        i += 8;
        match insn[0] {
            ATOMIC_DW | ATOMIC_W => {
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                if imm == BPF_ADD | BPF_FETCH {
                    adds.fetching += 1;
                } else if imm == BPF_ADD {
                    adds.plain += 1;
                }
            }
            LDDW => i += 8,
            _ => {}
        }
    }
    adds
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fetching_and_plain_atomic_adds() {
        let code = [
            // r7 = atomic_fetch_add((u64 *)(r0 + 0), r7)
            [0xdb, 0x70, 0, 0, 0x01, 0, 0, 0],
            // lock *(u64 *)(r0 + 0) += r7
            [0xdb, 0x70, 0, 0, 0x00, 0, 0, 0],
            // atomic_fetch_or: not an add
            [0xdb, 0x70, 0, 0, 0x41, 0, 0, 0],
            // r1 = 0x000000db_00000000 ll: the second half must not be read as an instruction
            [0x18, 0x01, 0, 0, 0, 0, 0, 0],
            [0xdb, 0, 0, 0, 0x01, 0, 0, 0],
            // exit
            [0x95, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(
            atomic_adds(&code),
            AtomicAdds {
                fetching: 1,
                plain: 1
            }
        );
    }

    #[test]
    fn rejects_non_elf() {
        assert!(code_sections(b"not an object at all, but long enough for a header").is_none());
    }
}

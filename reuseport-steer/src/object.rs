//! The compiled kernel program, embedded in the binary by the build script.

/// The eBPF object (ELF) built from `reuseport-ebpf`.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reuseport"));

/// Which eBPF object this build embeds: the FNV-1a 64-bit hash of its bytes, in hex. Not a
/// security digest, a name for a build (`reuseport --version`, `reuseport_build_info`): two
/// builds print the same fingerprint exactly when they carry the same program. FNV because it
/// takes a few lines and well under a millisecond, and needs no dependency.
pub fn fingerprint() -> String {
    format!("{:016x}", fnv1a_64(OBJECT))
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _};
    use reuseport_common::maps;

    use super::{fingerprint, fnv1a_64, OBJECT};

    #[test]
    fn the_fingerprint_is_fnv1a_of_the_object() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let f = fingerprint();
        assert_eq!(f.len(), 16, "{f}");
        assert!(f.bytes().all(|b| b.is_ascii_hexdigit()), "{f}");
        assert_eq!(f, fingerprint());
    }

    /// The program declares its maps from the specs in `reuseport-common`; this checks the
    /// object agrees with them, the shapes pinned maps are compared against.
    #[test]
    fn the_objects_maps_have_the_shapes_of_the_specs() -> Result<(), Box<dyn std::error::Error>> {
        let object = aya_obj::Object::parse(OBJECT)?;
        for shape in maps::STATE {
            let map = object
                .maps
                .get(shape.name)
                .ok_or(format!("map {} missing", shape.name))?;
            assert_eq!(
                (map.value_size(), map.max_entries()),
                (shape.value_size, shape.max_entries),
                "{}",
                shape.name
            );
        }
        for (name, flags) in [
            (maps::SLOT_STATS.name, maps::SLOT_STATS.flags),
            (maps::LOAD.name, maps::LOAD.flags),
            (maps::LEAST.name, maps::LEAST.flags),
        ] {
            let map = object.maps.get(name).ok_or(format!("map {name} missing"))?;
            assert_eq!(map.map_flags(), flags, "{name}");
        }
        Ok(())
    }

    /// BPF_STX | BPF_ATOMIC | BPF_DW: a 64-bit atomic read-modify-write.
    const ATOMIC_DW: u8 = 0xdb;
    /// The atomic's immediate: BPF_ADD (0x00) with BPF_FETCH (0x01).
    const ADD_FETCH: i32 = 0x01;

    /// Exact round-robin rests on a real fetch-and-add. LLVM silently emits a plain add (whose
    /// "old value" is garbage) for a Relaxed one, or fails without cpu v3: check the bytecode.
    #[test]
    fn tickets_use_the_atomic_fetch_form() -> Result<(), Box<dyn std::error::Error>> {
        let elf = object::File::parse(OBJECT)?;
        for name in ["sk_reuseport", "sk_reuseport/migrate"] {
            let section = elf
                .section_by_name(name)
                .ok_or(format!("program section {name} missing"))?;
            let code = section.data()?;
            let atomics: Vec<i32> = code
                .chunks_exact(8)
                .filter(|insn| insn[0] == ATOMIC_DW)
                .map(|insn| i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]))
                .collect();
            assert!(
                atomics.contains(&ADD_FETCH),
                "{name}: no atomic fetch-and-add in the program"
            );
            assert!(
                atomics.iter().all(|&imm| imm == ADD_FETCH),
                "{name}: a non-fetching atomic ({atomics:?}) would return garbage tickets"
            );
        }
        Ok(())
    }
}

//! The enums with a user-facing name: what the program can be told to do (stored as `u32` in
//! its maps, compared against `Variant as u32` there) and what a socket is. Each variant's name is
//! written once, in the [`named_enum!`] invocation, and serves `Display`, `FromStr`, serde and
//! clap alike.

use core::fmt;

/// Declares a `#[repr(u32)]` enum whose variants carry their raw value and their name, and
/// derives from that one list: `ALL`, `NAMES`, `name()`, `from_raw()`, and (by feature) serde,
/// clap and `FromStr`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $raw:literal => $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $ty {
            $( $(#[$vmeta])* $variant = $raw, )+
        }

        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [Self; [$($name),+].len()] = [$(Self::$variant),+];
            /// The name of every variant, in the order of [`Self::ALL`].
            pub const NAMES: [&'static str; [$($name),+].len()] = [$($name),+];
            /// What a value of this type is called in error messages.
            pub const WHAT: &'static str = $what;

            /// The name used on the command line, on the control socket and in output.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )+
                }
            }

            /// The variant stored as `raw` in a map, if any.
            pub const fn from_raw(raw: u32) -> Option<Self> {
                match raw {
                    $( $raw => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The variant called `name`, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.name() == name)
            }
        }

        #[cfg(any(test, feature = "std"))]
        impl core::str::FromStr for $ty {
            type Err = crate::ParseError;

            fn from_str(s: &str) -> Result<Self, crate::ParseError> {
                Self::from_name(s).ok_or_else(|| crate::ParseError::new($what, s, &Self::NAMES))
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        write!(f, "a {}", $what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::from_name(v).ok_or_else(|| E::unknown_variant(v, &$ty::NAMES))
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &Self::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

/// `Display` is the name, for the enums that have no separate human label.
macro_rules! display_by_name {
    ($($ty:ty),+) => {
        $(impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        })+
    };
}

named_enum! {
    /// How the program picks a listener among the active slots (`Config::policy`).
    #[derive(Default)]
    pub enum Policy ("policy") {
        /// The connection's flow hash over the active slots (like the kernel, minus drained
        /// ones).
        Hash = 0 => "hash",
        /// Exact round-robin: with N slots and M connections each gets floor(M/N) or ceil(M/N).
        #[default]
        RoundRobin = 1 => "round-robin",
        /// Smooth weighted round-robin: over any W = sum-of-weights connections, each slot gets
        /// exactly its weight (driven by the precomputed `SCHEDULE`).
        Weighted = 2 => "weighted",
        /// Round-robin over the active slots with the lowest load (accept queue plus requests
        /// in flight, sampled by the daemon; the `LEAST` list): equally loaded slots take
        /// turns. O(1) per connection.
        LeastLoaded = 3 => "least-loaded",
        /// The less loaded of two random active slots.
        P2c = 4 => "p2c",
        /// Consistent hashing over the active slots (Maglev): the flow hash indexes a lookup
        /// table the daemon recomputes on every membership change (`MAGLEV`, see
        /// [`crate::udp`]), so one slot leaving moves only its own flows and one joining
        /// about 1/N of them.
        Maglev = 5 => "maglev",
    }
}

named_enum! {
    /// What happens to a connection when no active slot can take it (`Config::on_empty`).
    #[derive(Default)]
    pub enum OnEmpty ("on-empty action") {
        /// `SK_PASS` without a selection: the kernel hashes over the whole group (draining
        /// sockets included).
        #[default]
        Pass = 0 => "pass",
        /// `SK_DROP`: the client sees a refused connection.
        Drop = 1 => "drop",
    }
}

named_enum! {
    /// Whether a slot receives new connections (`SlotConfig::state`). An empty slot has no
    /// state: the map stores [`SlotConfig::EMPTY`](crate::SlotConfig::EMPTY) there, which is no
    /// variant, so userspace sees it as `None`.
    pub enum SlotState ("slot state") {
        /// Receives new connections.
        Active = 1 => "active",
        /// Keeps its socket and its queue, gets no new connection.
        Draining = 2 => "draining",
        /// Out of the active set because its worker stopped accepting (set by the daemon's
        /// health monitor, cleared when the worker accepts again).
        Stuck = 3 => "stuck",
    }
}

named_enum! {
    /// Which program is attached: plain selection, or selection plus migration of the queued
    /// connections of a closing listener.
    #[derive(Default)]
    pub enum AttachMode ("attach mode") {
        Select = 0 => "select",
        #[default]
        SelectOrMigrate = 1 => "select-or-migrate",
    }
}

named_enum! {
    /// A socket's transport protocol, by its `IPPROTO_*` number.
    pub enum Protocol ("protocol") {
        Tcp = 6 => "tcp",
        Udp = 17 => "udp",
    }
}

named_enum! {
    /// A socket's address family, by its `AF_*` number.
    pub enum Family ("address family") {
        Ipv4 = 2 => "ipv4",
        Ipv6 = 10 => "ipv6",
    }
}

display_by_name!(Policy, OnEmpty, SlotState, AttachMode);

/// In messages, protocols and families read as people write them.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_raw_values_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().ok(), Some(p));
            assert_eq!(Policy::from_raw(p as u32), Some(p));
        }
        for s in SlotState::ALL {
            assert_eq!(SlotState::from_raw(s as u32), Some(s));
        }
        assert_eq!(SlotState::from_raw(crate::SlotConfig::EMPTY), None);
        assert_eq!("drop".parse::<OnEmpty>().ok(), Some(OnEmpty::Drop));
        assert_eq!("tcp".parse::<Protocol>().ok(), Some(Protocol::Tcp));
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = "fastest".parse::<Policy>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "unknown policy \"fastest\": expected one of hash, round-robin, weighted, \
                 least-loaded, p2c, maglev"
            )
        );
    }

    /// On the control socket the enums are their names (`cargo test --features serde`).
    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_names() -> Result<(), serde_json::Error> {
        assert_eq!(
            serde_json::to_string(&Policy::LeastLoaded)?,
            "\"least-loaded\""
        );
        let mode: AttachMode = serde_json::from_str("\"select-or-migrate\"")?;
        assert_eq!(mode, AttachMode::SelectOrMigrate);
        let err = serde_json::from_str::<OnEmpty>("\"reject\"").err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("unknown variant `reject`, expected `pass` or `drop`"),
            "{err}"
        );
        Ok(())
    }
}

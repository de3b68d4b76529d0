//! A fuzz input is a script of client actions on the control socket, in a byte format any byte
//! string decodes to (what does not fit is ignored, what runs out ends the script), so every
//! mutation libFuzzer makes is a valid script. [`Script`] writes the same format, for the seeds.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

/// The actions of one input, at most this many.
pub const MAX_OPS: usize = 64;
/// Connections open at the same time, at most.
pub const MAX_CONNECTIONS: usize = 4;
/// Descriptors in one message, at most: the kernel's limit, so a message of too many is sent
/// whole and the daemon has to refuse and close every one.
pub const MAX_FDS: usize = reuseport_worker::fdpass::SCM_MAX_FD;

/// One client action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Open a control connection; it becomes the current one.
    Connect,
    /// Make the connection with this index (modulo the open ones) the current one.
    Switch(u8),
    /// Send bytes as they are, with descriptors of the pool (by index) attached to the first.
    Send { bytes: Vec<u8>, fds: Vec<u8> },
    /// Send a well-formed request line (see [`Template`]), with descriptors attached.
    Request { template: Template, fds: Vec<u8> },
    /// Send `len` bytes of `fill` with no newline: a line longer than the protocol allows.
    Flood { len: u32, fill: u8 },
    /// Wait (briefly) for this many more replies on the current connection.
    Await(u8),
    /// End the sending half of the current connection (the daemon sees end of stream).
    ShutdownWrite,
    /// Close the current connection.
    Close,
}

/// Well-formed requests of every op, so the fuzzer reaches the state machine behind the
/// parser without having to find the JSON first. Numbers are kept small where the daemon
/// compares them with its slots and weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Template {
    Register {
        name: Name,
        weight: Option<u32>,
        pid: Option<u32>,
    },
    Load(u32),
    Status,
    PolicyGet(Group),
    PolicySet(u8, Group),
    Weight(u32, u32, Group),
    Drain(u32, Option<bool>, Group),
    Undrain(u32, Group),
}

/// The `name` of a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    None,
    Short,
    /// Control characters and an escape sequence, for the terminal.
    Hostile,
    /// This many characters.
    Long(u32),
}

/// The `group` field of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    None,
    /// One of the daemon's groups, by index.
    Served(u8),
    /// An address the daemon does not serve.
    Unknown,
    /// Not an address at all.
    Garbage,
}

/// The policy names a `policy_set` may carry: the known ones and one that is not.
const POLICIES: [&str; 6] = [
    "hash",
    "round-robin",
    "weighted",
    "least-loaded",
    "p2c",
    "fastest",
];

impl Template {
    /// The request line, newline included.
    pub fn line(&self, groups: &[SocketAddr]) -> Vec<u8> {
        let mut object = Map::new();
        let mut put = |key: &str, value: Value| {
            object.insert(key.to_owned(), value);
        };
        let op = match self {
            Self::Register { name, weight, pid } => {
                match name {
                    Name::None => {}
                    Name::Short => put("name", json!("worker")),
                    Name::Hostile => put("name", json!("\u{1b}[2J\r\nslot 0 evil\u{7}")),
                    Name::Long(n) => put("name", json!("n".repeat(*n as usize))),
                }
                if let Some(w) = weight {
                    put("weight", json!(w));
                }
                if let Some(p) = pid {
                    put("pid", json!(p));
                }
                "register"
            }
            Self::Load(n) => {
                put("inflight", json!(n));
                "load"
            }
            Self::Status => "status",
            Self::PolicyGet(g) => {
                group(*g, groups, &mut put);
                "policy_get"
            }
            Self::PolicySet(p, g) => {
                put("policy", json!(POLICIES[usize::from(*p) % POLICIES.len()]));
                group(*g, groups, &mut put);
                "policy_set"
            }
            Self::Weight(slot, weight, g) => {
                put("slot", json!(slot));
                put("weight", json!(weight));
                group(*g, groups, &mut put);
                "weight"
            }
            Self::Drain(slot, close, g) => {
                put("slot", json!(slot));
                if let Some(c) = close {
                    put("close", json!(c));
                }
                group(*g, groups, &mut put);
                "drain"
            }
            Self::Undrain(slot, g) => {
                put("slot", json!(slot));
                group(*g, groups, &mut put);
                "undrain"
            }
        };
        object.insert("op".to_owned(), json!(op));
        let mut line = Value::Object(object).to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

impl Template {
    /// The bytes [`decode`] reads back as this template.
    fn encode(&self, out: &mut Vec<u8>) {
        let slot = |s: u32| match s {
            u32::MAX => 255,
            1024.. => 254,
            s => s.min(7) as u8,
        };
        let weight = |w: u32| match w {
            u32::MAX => 255,
            254.. => 254,
            w => w as u8,
        };
        let group = |g: Group| match g {
            Group::None => 0,
            Group::Served(i) => 4 + i % 2,
            Group::Unknown => 6,
            Group::Garbage => 7,
        };
        let flag = |f: Option<bool>| match f {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        match self {
            Self::Register {
                name,
                weight: w,
                pid,
            } => {
                out.push(0);
                match name {
                    Name::None => out.push(0),
                    Name::Short => out.push(1),
                    Name::Hostile => out.push(2),
                    Name::Long(n) => {
                        out.push(3);
                        out.extend(u16::try_from(*n).unwrap_or(u16::MAX).to_le_bytes());
                    }
                }
                match w {
                    None => out.push(0),
                    Some(w) => out.extend([1, weight(*w)]),
                }
                match pid {
                    None => out.push(0),
                    Some(p) => {
                        out.push(1);
                        out.extend(p.to_le_bytes());
                    }
                }
            }
            Self::Load(n) => {
                out.push(1);
                out.extend(n.to_le_bytes());
            }
            Self::Status => out.push(2),
            Self::PolicyGet(g) => out.extend([3, group(*g)]),
            Self::PolicySet(p, g) => out.extend([4, *p, group(*g)]),
            Self::Weight(s, w, g) => out.extend([5, slot(*s), weight(*w), group(*g)]),
            Self::Drain(s, c, g) => out.extend([6, slot(*s), flag(*c), group(*g)]),
            Self::Undrain(s, g) => out.extend([7, slot(*s), group(*g)]),
        }
    }
}

fn group(g: Group, groups: &[SocketAddr], put: &mut impl FnMut(&str, Value)) {
    match g {
        Group::None => {}
        Group::Served(i) if !groups.is_empty() => put(
            "group",
            json!(groups[usize::from(i) % groups.len()].to_string()),
        ),
        Group::Served(_) | Group::Unknown => put("group", json!("127.0.0.1:9")),
        Group::Garbage => put("group", json!("not an address")),
    }
}

/// Reads a script; never fails.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(tag) = r.u8() else { break };
        let op = match tag % 8 {
            0 => Op::Connect,
            1 => Op::Switch(r.u8().unwrap_or(0)),
            2 => {
                let fds = r.fds();
                let len = usize::from(r.u16());
                Op::Send {
                    bytes: r.take(len).to_vec(),
                    fds,
                }
            }
            3 => {
                let fds = r.fds();
                Op::Request {
                    template: r.template(),
                    fds,
                }
            }
            4 => Op::Flood {
                // Up to twice the line limit.
                len: u32::from(r.u16()) * 2 + 1,
                fill: r.u8().unwrap_or(b'a'),
            },
            5 => Op::Await(r.u8().unwrap_or(1) % 4 + 1),
            6 => Op::ShutdownWrite,
            _ => Op::Close,
        };
        ops.push(op);
    }
    ops
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8().unwrap_or(0), self.u8().unwrap_or(0)])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    fn take(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    /// A count, then that many pool indices; counts past 250 mean far too many descriptors.
    fn fds(&mut self) -> Vec<u8> {
        let count = match self.u8().unwrap_or(0) {
            n @ 0..=5 => usize::from(n),
            n @ 6..=249 => usize::from(n % 3),
            n => MAX_FDS - usize::from(255 - n),
        };
        if count <= 5 {
            return self.take(count).to_vec();
        }
        let first = self.u8().unwrap_or(0);
        vec![first; count]
    }

    /// A slot: small ones (the daemon's) mostly, now and then one out of range.
    fn slot(&mut self) -> u32 {
        match self.u8().unwrap_or(0) {
            255 => u32::MAX,
            254 => 1024,
            n => u32::from(n % 8),
        }
    }

    fn weight(&mut self) -> u32 {
        match self.u8().unwrap_or(0) {
            255 => u32::MAX,
            254 => 1 << 20,
            n => u32::from(n),
        }
    }

    fn group(&mut self) -> Group {
        match self.u8().unwrap_or(0) % 8 {
            0..=3 => Group::None,
            4 => Group::Served(0),
            5 => Group::Served(1),
            6 => Group::Unknown,
            _ => Group::Garbage,
        }
    }

    fn flag(&mut self) -> Option<bool> {
        match self.u8().unwrap_or(0) % 3 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }

    fn template(&mut self) -> Template {
        match self.u8().unwrap_or(0) % 8 {
            0 => {
                let name = match self.u8().unwrap_or(0) % 4 {
                    0 => Name::None,
                    1 => Name::Short,
                    2 => Name::Hostile,
                    _ => Name::Long(u32::from(self.u16())),
                };
                let weight = self.flag().map(|_| self.weight());
                let pid = self.flag().map(|_| self.u32());
                Template::Register { name, weight, pid }
            }
            1 => Template::Load(self.u32()),
            2 => Template::Status,
            3 => Template::PolicyGet(self.group()),
            4 => Template::PolicySet(self.u8().unwrap_or(0), self.group()),
            5 => Template::Weight(self.slot(), self.weight(), self.group()),
            6 => Template::Drain(self.slot(), self.flag(), self.group()),
            _ => Template::Undrain(self.slot(), self.group()),
        }
    }
}

/// Writes scripts in the format [`decode`] reads (for the seed corpus).
#[derive(Default)]
pub struct Script(Vec<u8>);

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn connect(mut self) -> Self {
        self.0.push(0);
        self
    }

    pub fn switch(mut self, i: u8) -> Self {
        self.0.extend([1, i]);
        self
    }

    /// Raw bytes (at most 65,535 of them) with descriptors of the pool (at most 5).
    pub fn send(mut self, bytes: &[u8], fds: &[u8]) -> Self {
        self.0.push(2);
        self.fds(fds);
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.0.extend(len.to_le_bytes());
        self.0.extend(&bytes[..usize::from(len)]);
        self
    }

    /// Raw bytes with `count` (6 to [`MAX_FDS`]) copies of one pool descriptor.
    pub fn send_many(mut self, bytes: &[u8], count: usize, fd: u8) -> Self {
        self.0.push(2);
        let count = count.clamp(MAX_FDS - 5, MAX_FDS);
        self.0.push(255 - (MAX_FDS - count) as u8);
        self.0.push(fd);
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.0.extend(len.to_le_bytes());
        self.0.extend(&bytes[..usize::from(len)]);
        self
    }

    /// A well-formed request with descriptors of the pool (at most 5). Slots other than 0 to
    /// 7, 1024 and `u32::MAX`, and weights other than 0 to 253, 2^20 and `u32::MAX`, are
    /// written as the nearest of those.
    pub fn request(mut self, template: &Template, fds: &[u8]) -> Self {
        self.0.push(3);
        self.fds(fds);
        template.encode(&mut self.0);
        self
    }

    pub fn flood(mut self, half_len: u16, fill: u8) -> Self {
        self.0.push(4);
        self.0.extend(half_len.to_le_bytes());
        self.0.push(fill);
        self
    }

    pub fn wait(mut self, replies: u8) -> Self {
        self.0.extend([5, replies.saturating_sub(1) % 4]);
        self
    }

    pub fn shutdown_write(mut self) -> Self {
        self.0.push(6);
        self
    }

    pub fn close(mut self) -> Self {
        self.0.push(7);
        self
    }

    fn fds(&mut self, fds: &[u8]) {
        let fds = &fds[..fds.len().min(5)];
        self.0.push(fds.len() as u8);
        self.0.extend(fds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_decode_to_what_they_say() {
        let ops = decode(
            &Script::new()
                .connect()
                .send(b"{\"op\":\"status\"}\n", &[0, 1])
                .send_many(b"x", MAX_FDS, 2)
                .request(
                    &Template::Register {
                        name: Name::Short,
                        weight: None,
                        pid: Some(1),
                    },
                    &[0],
                )
                .flood(40_000, b'{')
                .wait(2)
                .shutdown_write()
                .close()
                .bytes(),
        );
        assert_eq!(
            ops,
            vec![
                Op::Connect,
                Op::Send {
                    bytes: b"{\"op\":\"status\"}\n".to_vec(),
                    fds: vec![0, 1]
                },
                Op::Send {
                    bytes: b"x".to_vec(),
                    fds: vec![2; MAX_FDS]
                },
                Op::Request {
                    template: Template::Register {
                        name: Name::Short,
                        weight: None,
                        pid: Some(1)
                    },
                    fds: vec![0]
                },
                Op::Flood {
                    len: 80_001,
                    fill: b'{'
                },
                Op::Await(2),
                Op::ShutdownWrite,
                Op::Close,
            ]
        );
    }

    #[test]
    fn templates_encode_to_what_decodes_back() {
        let g = [
            Group::None,
            Group::Served(1),
            Group::Unknown,
            Group::Garbage,
        ];
        let templates = [
            Template::Register {
                name: Name::Long(300),
                weight: Some(u32::MAX),
                pid: Some(0xdead_beef),
            },
            Template::Register {
                name: Name::Hostile,
                weight: Some(7),
                pid: None,
            },
            Template::Load(123_456),
            Template::Status,
            Template::PolicyGet(g[1]),
            Template::PolicySet(4, g[2]),
            Template::Weight(1024, 1 << 20, g[3]),
            Template::Drain(u32::MAX, Some(false), g[0]),
            Template::Undrain(7, g[1]),
        ];
        for template in templates {
            let ops = decode(&Script::new().request(&template, &[3]).bytes());
            assert_eq!(
                ops,
                vec![Op::Request {
                    template,
                    fds: vec![3]
                }]
            );
        }
    }

    #[test]
    fn any_bytes_decode() {
        let mut data: Vec<u8> = (0..=255).collect();
        data.extend((0..=255u8).rev());
        for start in 0..data.len() {
            assert!(decode(&data[start..]).len() <= MAX_OPS);
        }
    }

    #[test]
    fn every_template_is_a_request_the_protocol_knows() {
        let groups: Vec<SocketAddr> = vec!["127.0.0.1:7000".parse().unwrap_or(([0; 4], 0).into())];
        for kind in 0..8u8 {
            for arg in [0u8, 1, 3, 5, 254, 255] {
                let template = Reader(&[kind, arg, arg, arg, arg, arg, arg]).template();
                let line = template.line(&groups);
                let parsed: Result<reuseport_worker::Request, _> =
                    serde_json::from_slice(&line[..line.len() - 1]);
                assert!(
                    parsed.is_ok(),
                    "{template:?}: {}",
                    String::from_utf8_lossy(&line)
                );
            }
        }
    }
}

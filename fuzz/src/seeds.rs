//! The seed corpus: a script for every request and every way of breaking the protocol, so the
//! fuzzer starts from inputs that reach each refusal and each state of a session. Written into
//! `corpus/control_protocol/seed-*` by `cargo run -p reuseport-fuzz --bin seed-corpus`; the
//! replay test checks that the files and this list agree.

use crate::input::{Group, Name, Script, Template, MAX_FDS};

/// Pool indices (see [`crate::pool::KINDS`]).
const LISTENER: u8 = 0;
const SECOND_LISTENER: u8 = 1;
const V6_LISTENER: u8 = 2;
const FILE: u8 = 8;
const OWN: u8 = 11;

const STATUS: &[u8] = b"{\"op\":\"status\"}\n";
const REGISTER: &[u8] = b"{\"op\":\"register\"}\n";

fn register(name: Name, weight: Option<u32>) -> Template {
    Template::Register {
        name,
        weight,
        pid: None,
    }
}

/// Every seed, by name.
pub fn all() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Script)> = vec![
        ("empty".into(), Script::new()),
        (
            "status".into(),
            Script::new()
                .connect()
                .request(&Template::Status, &[])
                .wait(1),
        ),
        (
            "every-request-without-a-worker".into(),
            Script::new()
                .connect()
                .request(&Template::PolicyGet(Group::None), &[])
                .request(&Template::PolicyGet(Group::Served(1)), &[])
                .request(&Template::PolicySet(2, Group::Served(0)), &[])
                .request(&Template::Weight(0, 3, Group::Served(0)), &[])
                .request(&Template::Drain(0, Some(true), Group::None), &[])
                .request(&Template::Undrain(1, Group::Served(1)), &[])
                .request(&Template::Load(7), &[])
                .request(&Template::Status, &[])
                .wait(4)
                .wait(4),
        ),
        (
            "worker-lifecycle".into(),
            Script::new()
                .connect()
                .request(&register(Name::Short, Some(3)), &[LISTENER])
                .wait(1)
                .connect()
                .request(&register(Name::None, None), &[SECOND_LISTENER])
                .wait(1)
                .request(&Template::Load(5), &[])
                .request(&Template::Load(0), &[])
                .connect()
                .request(&Template::PolicySet(2, Group::None), &[])
                .request(&Template::Weight(0, 5, Group::Served(0)), &[])
                .request(&Template::Weight(1, 0, Group::Served(0)), &[])
                .request(&Template::Drain(1, None, Group::Served(0)), &[])
                .request(&Template::Undrain(1, Group::Served(0)), &[])
                .request(&Template::PolicySet(3, Group::Served(0)), &[])
                .request(&Template::PolicySet(4, Group::Served(0)), &[])
                .request(&Template::Drain(0, Some(true), Group::Served(0)), &[])
                .request(&Template::PolicyGet(Group::Served(0)), &[])
                .request(&Template::Status, &[])
                .wait(4)
                .wait(4)
                .wait(4)
                .switch(0)
                .close()
                .switch(1)
                .request(&Template::Status, &[])
                .wait(1),
        ),
        (
            "ipv6-group".into(),
            Script::new()
                .connect()
                .request(&register(Name::Short, None), &[V6_LISTENER])
                .wait(1)
                .connect()
                .request(&register(Name::Short, None), &[3])
                .wait(1)
                .connect()
                .request(&Template::PolicySet(1, Group::Served(1)), &[])
                .request(&Template::Weight(0, 2, Group::Served(1)), &[])
                .request(&Template::Drain(0, Some(false), Group::Served(1)), &[])
                .wait(3),
        ),
        (
            "weights-at-the-limits".into(),
            Script::new()
                .connect()
                .request(&register(Name::Short, Some(u32::MAX)), &[LISTENER])
                .wait(1)
                .connect()
                .request(&register(Name::Short, Some(0)), &[SECOND_LISTENER])
                .wait(1)
                .request(&Template::PolicySet(2, Group::None), &[])
                .request(&Template::Weight(0, 1 << 20, Group::Served(0)), &[])
                .request(&Template::Weight(1, u32::MAX, Group::Served(0)), &[])
                .request(&Template::Weight(0, 253, Group::Served(0)), &[])
                .request(&Template::Weight(1, 253, Group::Served(0)), &[])
                .request(&Template::Drain(1, None, Group::Served(0)), &[])
                .request(&Template::Undrain(1, Group::Served(0)), &[])
                .wait(4)
                .wait(4),
        ),
        (
            "slots-out-of-range".into(),
            Script::new()
                .connect()
                .request(&Template::Weight(1024, 1, Group::Served(0)), &[])
                .request(&Template::Drain(u32::MAX, Some(true), Group::Served(0)), &[])
                .request(&Template::Undrain(7, Group::Served(1)), &[])
                .wait(3),
        ),
        (
            "groups-unknown-and-garbage".into(),
            Script::new()
                .connect()
                .request(&Template::PolicyGet(Group::Unknown), &[])
                .request(&Template::PolicySet(1, Group::Garbage), &[])
                .request(&Template::PolicySet(5, Group::None), &[])
                .request(&Template::Weight(0, 1, Group::None), &[])
                .wait(4),
        ),
        (
            "hostile-and-long-names".into(),
            Script::new()
                .connect()
                .request(&register(Name::Hostile, None), &[LISTENER])
                .wait(1)
                .connect()
                .request(&register(Name::Long(1000), None), &[SECOND_LISTENER])
                .wait(1)
                .connect()
                .request(&register(Name::Long(65_535), None), &[LISTENER])
                .wait(1),
        ),
        (
            "pipelined-requests".into(),
            Script::new()
                .connect()
                .send(
                    b"{\"op\":\"status\"}\n{\"op\":\"policy_get\"}\n{\"op\":\"load\",\"inflight\":1}\n\
                      {\"op\":\"register\",\"name\":\"w\"}\n{\"op\":\"load\",\"inflight\":2}\n\
                      {\"op\":\"status\"}\n",
                    &[LISTENER],
                )
                .wait(4),
        ),
        (
            "load-flood".into(),
            Script::new()
                .connect()
                .request(&register(Name::Short, None), &[LISTENER])
                .send(&b"{\"op\":\"load\",\"inflight\":3}\n".repeat(500), &[])
                .request(&Template::Status, &[])
                .wait(2),
        ),
        (
            "line-split-around-its-descriptor".into(),
            Script::new()
                .connect()
                .send(b"{\"op\":\"reg", &[LISTENER])
                .send(b"ister\",\"name\":\"split\"}\n", &[])
                .wait(1),
        ),
        (
            "two-registers-one-descriptor".into(),
            Script::new()
                .connect()
                .send(&REGISTER.repeat(2), &[LISTENER])
                .wait(2),
        ),
        (
            "two-descriptors-for-two-registers".into(),
            Script::new()
                .connect()
                .send(&REGISTER.repeat(2), &[LISTENER, SECOND_LISTENER])
                .wait(2),
        ),
        (
            "register-twice-on-one-connection".into(),
            Script::new()
                .connect()
                .send(REGISTER, &[LISTENER])
                .wait(1)
                .send(REGISTER, &[SECOND_LISTENER])
                .wait(1)
                .send(REGISTER, &[LISTENER])
                .wait(1),
        ),
        (
            "same-socket-two-connections".into(),
            Script::new()
                .connect()
                .send(REGISTER, &[LISTENER])
                .wait(1)
                .connect()
                .send(REGISTER, &[LISTENER])
                .wait(1),
        ),
        (
            "register-without-descriptor".into(),
            Script::new().connect().send(REGISTER, &[]).wait(1),
        ),
        (
            "descriptor-with-status".into(),
            Script::new().connect().send(STATUS, &[FILE]).wait(1),
        ),
        (
            "descriptor-without-a-line".into(),
            Script::new().connect().send(b"x", &[LISTENER]).wait(1),
        ),
        (
            "too-many-descriptors".into(),
            Script::new()
                .connect()
                .send(REGISTER, &[LISTENER, LISTENER, LISTENER, LISTENER, LISTENER])
                .wait(1),
        ),
        (
            "descriptors-at-the-kernel-limit".into(),
            Script::new()
                .connect()
                .send_many(REGISTER, MAX_FDS, LISTENER)
                .wait(1),
        ),
        (
            "own-connection-as-worker".into(),
            Script::new().connect().send(REGISTER, &[OWN]).wait(1),
        ),
        (
            // The first crash: the session held the connection's own end and never ended.
            "own-connection-with-a-partial-line-then-close".into(),
            Script::new()
                .connect()
                .send(b"{\"op\":\"register\"", &[OWN])
                .close()
                .connect()
                .send(STATUS, &[])
                .wait(1),
        ),
        (
            "truncated-line".into(),
            Script::new()
                .connect()
                .send(b"{\"op\":\"status\"", &[])
                .shutdown_write()
                .wait(1),
        ),
        (
            "oversized-line".into(),
            Script::new().connect().flood(40_000, b'a').wait(1),
        ),
        (
            "oversized-json-string".into(),
            Script::new()
                .connect()
                .send(b"{\"op\":\"register\",\"name\":\"", &[])
                .flood(33_000, b'n')
                .wait(1),
        ),
        (
            "line-just-under-the-limit".into(),
            Script::new()
                .connect()
                .send(b"{\"op\":\"status\",\"pad\":\"", &[])
                .flood(32_700, b' ')
                .send(b"\"}\n", &[])
                .wait(1),
        ),
        (
            "empty-lines".into(),
            Script::new().connect().send(b"\n\n\r\n", &[]).wait(2),
        ),
        (
            "close-mid-registration".into(),
            Script::new()
                .connect()
                .send(REGISTER, &[LISTENER])
                .close()
                .connect()
                .send(STATUS, &[])
                .wait(1),
        ),
        (
            "send-after-shutdown".into(),
            Script::new()
                .connect()
                .send(REGISTER, &[LISTENER])
                .shutdown_write()
                .send(STATUS, &[])
                .wait(1),
        ),
    ];
    for (i, line) in BAD_LINES.iter().enumerate() {
        seeds.push((
            format!("bad-line-{i}"),
            Script::new()
                .connect()
                .send(line, &[])
                .wait(1)
                .connect()
                .send(STATUS, &[])
                .wait(1),
        ));
    }
    for kind in 0..crate::pool::KINDS.len() as u8 {
        seeds.push((
            format!("register-pool-{kind}"),
            Script::new()
                .connect()
                .request(&register(Name::Short, Some(1)), &[kind])
                .wait(1),
        ));
    }
    seeds
        .into_iter()
        .map(|(name, script)| (name, script.bytes()))
        .collect()
}

/// Lines that are not requests.
const BAD_LINES: &[&[u8]] = &[
    b"{\n",
    b"not json\n",
    b"[]\n",
    b"null\n",
    b"{\"op\":\"nope\"}\n",
    b"{\"op\":\"weight\",\"slot\":\"x\",\"weight\":1}\n",
    b"{\"op\":\"weight\",\"slot\":-1,\"weight\":1}\n",
    b"{\"op\":\"weight\",\"slot\":4294967296,\"weight\":1}\n",
    b"{\"op\":\"drain\",\"slot\":0,\"close\":\"yes\"}\n",
    b"{\"op\":\"policy_set\",\"policy\":7}\n",
    b"{\"op\":\"policy_set\",\"policy\":\"weighted\",\"group\":80}\n",
    b"{\"op\":\"load\"}\n",
    b"{\"op\":\"status\",\"op\":\"status\"}\n",
    b"{\"op\":\"status\"} trailing\n",
    b"\xff\xfe{\"op\":\"status\"}\n",
    b"{\"op\":\"register\",\"name\":\"\\ud800\"}\n",
    b"\x00\n",
];

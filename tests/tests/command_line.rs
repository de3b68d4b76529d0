//! The command line as scripts and shells use it: completions, man pages, `--version`, exit
//! statuses, and the JSON of the read commands.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
};

use reuseport_testing::{binary, daemon::Fixture, TestResult as Result};

fn reuseport(args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary::locate()?).args(args).output()?)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn completions_name_every_command_for_each_shell() -> Result {
    for shell in ["bash", "zsh", "fish"] {
        let out = reuseport(&["completions", shell])?;
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for command in [
            "run",
            "status",
            "policy",
            "top",
            "drain",
            "spawn",
            "adopt",
            "completions",
        ] {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
        // The hidden generator is not offered.
        assert!(!script.contains("man pages"), "{shell} offers `man`");
    }
    let out = reuseport(&["completions", "tcsh"])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    Ok(())
}

#[test]
fn man_pages_are_generated() -> Result {
    let dir = std::env::temp_dir().join(format!("reuseport-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = reuseport(&["man", "--out", &dir.to_string_lossy()])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.join("reuseport.1"))?;
    assert!(page.contains(".TH reuseport 1"), "{page}");
    assert!(page.contains(".SH \"EXIT STATUS\"") || page.contains(".SH EXIT STATUS"));
    assert!(page.contains("daemon is not running"), "{page}");
    for command in [
        "run",
        "status",
        "top",
        "policy-get",
        "spawn",
        "adopt",
        "completions",
    ] {
        let sub = std::fs::read_to_string(dir.join(format!("reuseport-{command}.1")))?;
        assert!(sub.contains(".SH SYNOPSIS"), "reuseport-{command}.1: {sub}");
    }
    // The adoption flag and verb, as --help shows them.
    let run = std::fs::read_to_string(dir.join("reuseport-run.1"))?;
    assert!(run.contains("adopt"), "{run}");
    std::fs::remove_dir_all(&dir)?;
    let help = stdout(&reuseport(&["--help"])?);
    assert!(help.contains("adopt"), "{help}");
    let help = stdout(&reuseport(&["run", "--help"])?);
    assert!(help.contains("--adopt"), "{help}");
    Ok(())
}

#[test]
fn version_names_the_embedded_program() -> Result {
    let out = reuseport(&["--version"])?;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("reuseport {} ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let fingerprint = text
        .split("eBPF object ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .ok_or_else(|| format!("no fingerprint in {text}"))?;
    assert_eq!(fingerprint.len(), 16, "{text}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
    Ok(())
}

#[test]
fn exit_status_without_a_daemon() -> Result {
    let nowhere = std::env::temp_dir().join(format!("reuseport-none-{}.sock", std::process::id()));
    let nowhere = nowhere.to_string_lossy();
    for args in [
        &["status", "--control", &nowhere][..],
        &["policy", "get", "--json", "--control", &nowhere],
        &["top", "--once", "--control", &nowhere],
    ] {
        let out = reuseport(args)?;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
    }
    for args in [
        &["status", "--bogus"][..],
        &["policy", "set", "no-such-policy"],
        &["top", "--json"],
        &[],
    ] {
        let out = reuseport(args)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    Ok(())
}

#[test]
fn read_commands_speak_json_and_refusals_exit_4() -> Result {
    let mut f = Fixture::new("cli-json")?;
    f.echo_workers(1)?;
    f.wait_workers(1)?;

    let out = f.cli(&["policy", "get", "--json"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["groups"][0]["group"], "127.0.0.1:8080", "{json}");
    assert_eq!(json["groups"][0]["policy"], "round-robin", "{json}");

    let out = f.cli(&["policy", "get", "--group", "127.0.0.1:8080", "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["groups"][0]["policy"], "round-robin", "{json}");

    let out = f.cli(&["top", "--once", "--json", "--interval-ms", "100"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["groups"][0]["workers"][0]["name"], "w0", "{json}");
    assert!(
        json["groups"][0]["workers"][0]["share"].is_number(),
        "{json}"
    );

    let out = f.cli(&["status"])?;
    let table = stdout(&out);
    assert!(table.contains("RECV-Q"), "{table}");
    let out = f.cli(&["status", "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        json["groups"][0]["workers"][0]["queue"].is_number(),
        "{json}"
    );

    // The live view into a pipe: plain frames one after the other, no screen control.
    let mut top = Command::new(binary::locate()?)
        .args(["top", "--interval-ms", "100", "--control"])
        .arg(&f.control)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(top.stdout.take().ok_or("no stdout")?).lines();
    let mut frames = 0;
    let mut text = String::new();
    for line in lines.by_ref().take(40) {
        let line = line?;
        frames += usize::from(line.starts_with("group 127.0.0.1:8080"));
        text.push_str(&line);
        text.push('\n');
        if frames == 2 {
            break;
        }
    }
    top.kill()?;
    top.wait()?;
    assert_eq!(frames, 2, "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape sequences into a pipe: {text:?}"
    );
    assert!(text.contains("RECV-Q"), "{text}");

    // Refused by the daemon: an address it does not serve, a slot nobody holds.
    for args in [
        &["policy", "get", "--group", "127.0.0.1:1"][..],
        &["drain", "999"],
    ] {
        let out = f.cli(args)?;
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
    }
    Ok(())
}

//! What an operator watches: the Prometheus endpoint and `reuseport top --once`, checked
//! against traffic the test made itself, and the endpoint checked by the tools its users run
//! (promtool, an OpenMetrics parser) when they are installed (`cargo xtask setup` installs
//! them).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use reuseport_testing::loadgen::Load;
use reuseport_testing::{daemon::Fixture, TestResult as Result};

/// What Prometheus 2 sends: OpenMetrics first, the 0.0.4 text as fallback.
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
    application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// One HTTP/1.1 response: status code, head (lowercase), body.
struct Response {
    code: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

/// Sends one request on `stream` and reads its response (the body by Content-Length, none
/// for HEAD), leaving the connection open.
fn exchange(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<Response> {
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(
        stream.get_mut(),
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{accept}\r\n"
    )?;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Err(format!("connection closed in the head: {head}").into());
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head}"))?;
    let mut response = Response {
        code,
        head,
        body: String::new(),
    };
    if method != "HEAD" {
        let length: usize = response
            .header("content-length")
            .ok_or("no content-length")?
            .parse()?;
        let mut body = vec![0; length];
        stream.read_exact(&mut body)?;
        response.body = String::from_utf8(body)?;
    }
    Ok(response)
}

fn connect(addr: &str) -> Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(stream))
}

fn scrape_as(addr: &str, accept: Option<&str>) -> Result<Response> {
    let response = exchange(&mut connect(addr)?, "GET", "/metrics", accept)?;
    assert_eq!(response.code, 200, "{}", response.head);
    Ok(response)
}

fn scrape(addr: &str) -> Result<String> {
    Ok(scrape_as(addr, Some(OPENMETRICS))?.body)
}

/// The value of the sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_what_the_clients_saw() -> Result {
    let mut f = Fixture::with_daemon_args("metrics", &["--metrics", "127.0.0.1:9464"])?;
    f.echo_workers(3)?;
    let status = f.wait_workers(3)?;
    let counts = f.load_ok(300);
    let text = scrape("127.0.0.1:9464")?;
    for w in &status.workers {
        let prefix = format!(
            "reuseport_connections_selected_total{{group=\"127.0.0.1:8080\",slot=\"{}\",pid=\"{}\",name=\"{}\"}}",
            w.slot, w.pid, w.name
        );
        let got = sample(&text, &prefix).ok_or_else(|| format!("no {prefix} in\n{text}"))?;
        assert_eq!(got as u64, counts[&w.pid], "{prefix}");
        assert!(text.contains(&format!(
            "reuseport_worker_state{{group=\"127.0.0.1:8080\",slot=\"{}\",pid=\"{}\",name=\"{}\",state=\"active\"}} 1",
            w.slot, w.pid, w.name
        )));
    }
    assert_eq!(
        sample(&text, "reuseport_fallbacks_total{group=\"127.0.0.1:8080\"}"),
        Some(0.0)
    );
    assert!(text.contains("reuseport_policy{group=\"127.0.0.1:8080\",policy=\"round-robin\"} 1"));
    assert!(
        text.contains("reuseport_select_errors_total{group=\"127.0.0.1:8080\",errno=\"ENOENT\"} 0")
    );
    assert!(text.trim_end().ends_with("# EOF"));
    Ok(())
}

/// Runs `program args` with `input` on stdin; `None` when the program is not installed.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<Option<(bool, String)>> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(Some((out.status.success(), text)))
}

/// The strict OpenMetrics parser of the Python client (Debian's python3-prometheus-client):
/// it rejects what Prometheus's own OpenMetrics parser rejects (no `# EOF`, a counter sample
/// without `_total`, a UNIT that the name does not end with, clashing names).
const OPENMETRICS_CHECK: &str = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
list(text_string_to_metric_families(sys.stdin.read()))\n";

/// promtool lints the Prometheus text format only (it reads OpenMetrics as that format and
/// then misses the HELP of every counter), so each format is checked by the tool made for it.
#[test]
fn metrics_pass_promtool_and_the_openmetrics_parser() -> Result {
    let mut f = Fixture::with_daemon_args("promtool", &["--metrics", "127.0.0.1:9465"])?;
    f.echo_workers(2)?;
    f.wait_workers(2)?;
    f.load_ok(20);

    let text = scrape_as("127.0.0.1:9465", None)?;
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(text
        .body
        .contains("# HELP reuseport_connections_selected_total "));
    assert!(text
        .body
        .contains("# TYPE reuseport_program_run_time_seconds_total counter"));
    let build_info = text
        .body
        .lines()
        .find(|l| l.starts_with("reuseport_build_info{"))
        .ok_or("no build info")?;
    assert!(build_info.ends_with("} 1"), "{build_info}");
    let tag = build_info
        .split("program_tag=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .ok_or("no program_tag")?;
    assert_eq!(
        tag.len(),
        16,
        "the kernel's tag of the loaded program: {build_info}"
    );
    match run_with_input("promtool", &["check", "metrics"], &text.body)? {
        Some((ok, out)) => assert!(ok && out.is_empty(), "promtool:\n{out}\n{}", text.body),
        None => eprintln!("promtool is not installed (cargo xtask setup installs it): skipped"),
    }

    let open = scrape_as("127.0.0.1:9465", Some(OPENMETRICS))?;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.ends_with("# EOF\n"));
    assert!(open
        .body
        .contains("# UNIT reuseport_program_run_time_seconds seconds"));
    // Debian's python, where python3-prometheus-client installs (a pyenv python may lack it).
    match run_with_input("/usr/bin/python3", &["-c", OPENMETRICS_CHECK], &open.body)? {
        Some((_, out)) if out.contains("No module named 'prometheus_client'") => {
            eprintln!("python3-prometheus-client is not installed: OpenMetrics parse skipped");
        }
        Some((ok, out)) => assert!(
            ok && out.is_empty(),
            "OpenMetrics parser:\n{out}\n{}",
            open.body
        ),
        None => eprintln!("no /usr/bin/python3: OpenMetrics parse skipped"),
    }
    Ok(())
}

/// The endpoint behaves as HTTP clients expect: HEAD, keep-alive, an index, a helpful 404.
#[test]
fn metrics_endpoint_speaks_http() -> Result {
    let _f = Fixture::with_daemon_args("http", &["--metrics", "127.0.0.1:9466"])?;
    let mut conn = connect("127.0.0.1:9466")?;

    let head = exchange(&mut conn, "HEAD", "/metrics", None)?;
    assert_eq!(head.code, 200, "{}", head.head);
    let length: usize = head.header("content-length").ok_or("no length")?.parse()?;
    assert!(length > 0, "HEAD announces the length GET would send");

    // Same connection: GET after HEAD proves no body followed the HEAD response.
    let first = exchange(&mut conn, "GET", "/metrics", None)?;
    assert_eq!(first.code, 200);
    assert!(first.body.starts_with("# HELP "), "{}", first.body);
    let second = exchange(&mut conn, "GET", "/metrics", Some(OPENMETRICS))?;
    assert_eq!(second.code, 200);
    assert!(second.body.ends_with("# EOF\n"));

    let missing = exchange(&mut conn, "GET", "/metric", None)?;
    assert_eq!(missing.code, 404);
    assert!(missing.body.contains("/metrics"), "{}", missing.body);

    let index = exchange(&mut conn, "GET", "/", None)?;
    assert_eq!(index.code, 200);
    assert!(index.body.contains("href=\"/metrics\""), "{}", index.body);
    Ok(())
}

#[test]
fn top_once_shows_the_shares_of_known_traffic() -> Result {
    // Health is not under test: on a loaded machine a worker caught between two accepts could
    // be found stuck and skipped, which would bend the exact shares.
    let mut f = Fixture::with_daemon_args("top", &["--stuck-ms", "60000"])?;
    f.echo_workers(4)?;
    f.wait_workers(4)?;
    let addr = f.addr;
    let control = f.control.clone();
    // `top --once` measures over its interval: make 400 connections during it (all of them,
    // or the window would cut a round of the rotation short: a generous interval).
    let top = std::thread::spawn(move || {
        std::process::Command::new(reuseport_testing::binary::locate()?)
            .args(["top", "--once", "--interval-ms", "4000", "--control"])
            .arg(control)
            .output()
    });
    std::thread::sleep(Duration::from_millis(200));
    let outcomes = Load::new(addr, 400, 4).run();
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    let out = top.join().map_err(|_| "top thread panicked")??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("group 127.0.0.1:8080  policy round-robin"),
        "{text}"
    );
    // Round-robin: each worker a quarter of the interval's connections.
    assert_eq!(text.matches(" 25.0%").count(), 4, "{text}");
    for i in 0..4 {
        assert!(text.contains(&format!("w{i}")), "{text}");
    }
    Ok(())
}

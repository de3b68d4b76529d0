//! What an operator watches: the Prometheus endpoint and `reuseport top --once`, checked
//! against traffic the test made itself.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use reuseport_testing::loadgen::Load;
use reuseport_testing::{daemon::Fixture, TestResult as Result};

fn scrape(addr: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_owned())
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

#[test]
fn top_once_shows_the_shares_of_known_traffic() -> Result {
    let mut f = Fixture::new("top")?;
    f.echo_workers(4)?;
    f.wait_workers(4)?;
    let addr = f.addr;
    let control = f.control.clone();
    // `top --once` measures over its interval: make 400 connections during it.
    let top = std::thread::spawn(move || {
        std::process::Command::new(reuseport_testing::binary::locate()?)
            .args(["top", "--once", "--interval-ms", "1500", "--control"])
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

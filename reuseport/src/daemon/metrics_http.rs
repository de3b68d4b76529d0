//! The daemon's `/metrics` endpoint: a bare HTTP/1.1 responder, enough for Prometheus and
//! curl. Each scrape renders the current status; nothing is kept between scrapes.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use log::{debug, info};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::owner::Handle;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr} (--metrics)"))?;
    info!("metrics on http://{addr}/metrics");
    Ok(listener)
}

pub async fn serve(listener: TcpListener, owner: Handle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &owner).await {
                debug!("metrics request: {e}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, owner: &Handle) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        let groups = owner
            .call(|r| r.status())
            .await
            .map_err(|_| std::io::Error::other("the daemon is stopping"))?;
        match crate::metrics::render(&groups) {
            Ok(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "encoding failed\n".into(),
            ),
        }
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".into())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

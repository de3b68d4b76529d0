//! The daemon's `/metrics` endpoint, served by hyper (HTTP/1.1 with keep-alive, HEAD, a 404
//! that points at `/metrics`, an index page at `/`). Each scrape asks `status` for the groups
//! and renders them in the format the scraper's `Accept` prefers; nothing is kept between
//! scrapes. The endpoint knows the daemon only through `status`, so it does not care how the
//! daemon keeps its state.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, VARY},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, info};
use tokio::net::TcpListener;

use reuseport_worker::GroupStatus;

use crate::metrics::{self, Format};

/// A client that sends no complete request head within this is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>reuseport</title></head><body>\n\
<h1>reuseport</h1>\n<p><a href=\"/metrics\">/metrics</a>: the daemon's metrics \
(Prometheus text, or OpenMetrics when asked for in Accept).</p>\n</body></html>\n";

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr} (--metrics)"))?;
    info!("metrics on http://{addr}/metrics");
    Ok(listener)
}

/// Serves the endpoint on `listener` until the task is dropped; `status` gives the groups of
/// one scrape.
pub async fn serve<S, F>(listener: TcpListener, status: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<GroupStatus>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(respond(&request, status).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!("metrics connection: {e}");
            }
        });
    }
}

/// The answer to one request. hyper sends no body for HEAD, with the headers GET would have.
async fn respond<S, F>(request: &Request<Incoming>, status: S) -> Response<Full<Bytes>>
where
    S: Fn() -> F,
    F: Future<Output = Vec<GroupStatus>>,
{
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not served here: use GET or HEAD\n", request.method()),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            match metrics::render(&status().await, format) {
                Ok(text) => {
                    let mut response = with_type(StatusCode::OK, format.content_type(), text);
                    response
                        .headers_mut()
                        .insert(VARY, HeaderValue::from_static("Accept"));
                    response
                }
                Err(_) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n".into(),
                ),
            }
        }
        "/" => with_type(StatusCode::OK, "text/html; charset=utf-8", INDEX.into()),
        other => plain(
            StatusCode::NOT_FOUND,
            format!("nothing at {other}: the metrics are at /metrics\n"),
        ),
    }
}

fn plain(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(code, "text/plain; charset=utf-8", body)
}

fn with_type(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

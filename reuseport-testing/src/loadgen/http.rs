//! The little HTTP the load generators speak: a `GET`, and finding where a response ends and
//! which worker wrote it.

use std::net::SocketAddr;

/// A `GET` request head.
pub fn get(addr: SocketAddr, path: &str, keep_alive: bool) -> String {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n")
}

/// The `pid=N` of a worker's response body.
pub fn parse_pid(response: &str) -> Option<u32> {
    let body = response.split_once("\r\n\r\n")?.1;
    body.trim().strip_prefix("pid=")?.parse().ok()
}

/// The length of the first complete response in `buf` (head plus `Content-Length` body), or
/// `None` while more bytes are needed. A response without `Content-Length` ends with the
/// connection, which the caller sees as end of stream.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    })?;
    (buf.len() >= head_end + body).then_some(head_end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pid_from_a_response() {
        let r = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npid=4242\n";
        assert_eq!(parse_pid(r), Some(4242));
        assert_eq!(parse_pid("HTTP/1.1 404 Not Found\r\n\r\nnot found\n"), None);
    }

    #[test]
    fn a_response_ends_after_its_content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-length: 9\r\n\r\npid=4242\nHTTP/1.1";
        assert_eq!(response_len(r), Some(r.len() - 8));
        assert_eq!(response_len(&r[..30]), None);
        assert_eq!(response_len(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[test]
    fn requests_say_whether_to_keep_the_connection() {
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            get(addr, "/sleep?ms=1", true),
            "GET /sleep?ms=1 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: keep-alive\r\n\r\n"
        );
        assert!(get(addr, "/", false).contains("Connection: close"));
    }
}

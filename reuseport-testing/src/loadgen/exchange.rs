//! One request on a tokio connection, shared by the open- and closed-loop loads.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{http, Connections, Target};

/// A client connection and the bytes read past the last response.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends a `GET` and reads its response; returns the answering worker's pid.
    pub(crate) async fn get(
        &mut self,
        addr: SocketAddr,
        path: &str,
        keep: bool,
    ) -> io::Result<u32> {
        self.stream
            .write_all(http::get(addr, path, keep).as_bytes())
            .await?;
        let mut chunk = [0u8; 1024];
        let len = loop {
            if let Some(len) = http::response_len(&self.buf) {
                break len;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response ended",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let response: Vec<u8> = self.buf.drain(..len).collect();
        let text = String::from_utf8_lossy(&response);
        http::parse_pid(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no pid in response {text:?}"),
            )
        })
    }

    /// Closes with an RST: neither side keeps a TIME_WAIT, so a long run never runs out of
    /// ports.
    pub(crate) fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// Request `index` on a new connection, bounded by the target's timeout; returns the pid.
pub(crate) async fn on_new_connection(target: &Target, index: u64) -> Result<u32, String> {
    let work = async {
        let mut conn = Conn::open(target.addr).await?;
        let pid = conn.get(target.addr, target.path(index), false).await;
        conn.reset();
        pid
    };
    match tokio::time::timeout(target.timeout, work).await {
        Ok(Ok(pid)) => Ok(pid),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no response within {:?}", target.timeout)),
    }
}

/// Request `index` on `conn` (opened first when `None`), bounded by the target's timeout.
/// The connection is kept for the next request only if this one succeeded.
pub(crate) async fn on_kept_connection(
    target: &Target,
    index: u64,
    conn: &mut Option<Conn>,
) -> Result<u32, String> {
    debug_assert_eq!(target.connections, Connections::KeepAlive);
    let work = async {
        if conn.is_none() {
            *conn = Some(Conn::open(target.addr).await?);
        }
        match conn.as_mut() {
            Some(c) => c.get(target.addr, target.path(index), true).await,
            None => Err(io::Error::other("no connection")),
        }
    };
    let result = match tokio::time::timeout(target.timeout, work).await {
        Ok(Ok(pid)) => Ok(pid),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no response within {:?}", target.timeout)),
    };
    if result.is_err() {
        if let Some(c) = conn.take() {
            c.reset();
        }
    }
    result
}

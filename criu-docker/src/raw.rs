//! The one Docker API request bollard has no parameter for: starting a
//! container from a checkpoint (`POST /containers/{id}/start?checkpoint=`),
//! sent with hyper (bollard's own HTTP client) on the daemon's socket.

use std::path::PathBuf;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `unix:///path`
    Unix(PathBuf),
    /// `tcp://host:port` (plain HTTP)
    Tcp(String),
}

impl Endpoint {
    /// Parses a `DOCKER_HOST`-style URI.
    pub(crate) fn parse(uri: &str) -> Result<Endpoint, String> {
        if let Some(path) = uri.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = uri
            .strip_prefix("tcp://")
            .or_else(|| uri.strip_prefix("http://"))
        {
            return Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_string()));
        }
        Err(format!(
            "the Docker host {uri:?} is neither unix:///PATH nor tcp://HOST:PORT (TLS and SSH \
             daemons are not supported: the daemon must run on this machine, whose files hold \
             its checkpoints)"
        ))
    }
}

/// Sends `POST path` (with the API version prefix `/v{version}`) and
/// returns an error holding the daemon's message unless it answered 2xx.
pub(crate) async fn post(endpoint: &Endpoint, version: &str, path: &str) -> Result<(), String> {
    match endpoint {
        Endpoint::Unix(socket) => {
            let s = UnixStream::connect(socket)
                .await
                .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
            post_on(s, version, path).await
        }
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            post_on(s, version, path).await
        }
    }
}

async fn post_on<S>(stream: S, version: &str, path: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::post(format!("/v{version}{path}"))
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    driver.abort();
    if status.is_success() {
        return Ok(());
    }
    // The daemon answers {"message": "..."}.
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    Err(format!("{status}: {message}"))
}

//! One Docker API request that bollard has no parameter for: starting a
//! container from a checkpoint (`POST /containers/{id}/start?checkpoint=`).
//! It goes through hyper, bollard's own HTTP client, on the daemon's socket.

use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::container::BoxError;

/// Sends `POST path` (API version 1.41) to the daemon on `socket`; an
/// answer other than 2xx is an error holding the daemon's message.
pub async fn post(socket: &Path, path: &str) -> Result<(), BoxError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::post(format!("/v1.41{path}"))
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim()).into())
    }
}

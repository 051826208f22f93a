//! Fetching a manifest with a cap on its size. oci-client 0.18 reads a
//! manifest's body whole, whatever its length, so a hostile registry could
//! make a pull hold gigabytes before anything is checked; here the body
//! is read chunk by chunk and refused beyond [`MANIFEST_MAX`]. The
//! credentials are oci-client's (its bearer token, or the basic
//! credentials it was given), the TLS settings the registry client's.

use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

/// The largest manifest or index taken (what registries accept: 4 MiB).
pub(crate) const MANIFEST_MAX: usize = 4 << 20;

/// The manifest media types asked for.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a fetch failed.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// What the registry client would have said.
    Client(OciDistributionError),
    /// The body passed [`MANIFEST_MAX`].
    TooLarge,
}

impl From<OciDistributionError> for FetchError {
    fn from(e: OciDistributionError) -> FetchError {
        FetchError::Client(e)
    }
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> FetchError {
        FetchError::Client(OciDistributionError::RequestError(e))
    }
}

/// A plain HTTP client for manifests, set up like the registry client.
pub(crate) struct ManifestFetcher {
    http: reqwest::Client,
    scheme: &'static str,
}

impl ManifestFetcher {
    pub(crate) fn new(
        plain_http: bool,
        ca_pem: Option<&[u8]>,
        timeout: std::time::Duration,
    ) -> reqwest::Result<ManifestFetcher> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout);
        if let Some(pem) = ca_pem {
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        Ok(ManifestFetcher {
            http: b.build()?,
            scheme: if plain_http { "http" } else { "https" },
        })
    }

    /// The manifest (or index) `r` names, at most [`MANIFEST_MAX`] bytes,
    /// checked against the digest in `r` or the registry's
    /// `Docker-Content-Digest`.
    pub(crate) async fn fetch(
        &self,
        client: &Client,
        auth: &RegistryAuth,
        r: &Reference,
    ) -> Result<OciManifest, FetchError> {
        let token = client.auth(r, auth, RegistryOperation::Pull).await?;
        let target = r.digest().or(r.tag()).unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{target}",
            self.scheme,
            r.resolve_registry(),
            r.repository()
        );
        let mut req = self.http.get(&url).header("Accept", ACCEPT);
        req = match (token, auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            (None, _) => req,
        };
        let mut resp = req.send().await?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return Err(OciDistributionError::UnauthorizedError { url }.into()),
            404 => return Err(OciDistributionError::ImageManifestNotFoundError(url).into()),
            code => {
                return Err(OciDistributionError::ServerError {
                    code,
                    url,
                    message: "fetching the manifest".into(),
                }
                .into())
            }
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MANIFEST_MAX as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let stated = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MANIFEST_MAX {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        for expected in [r.digest().map(str::to_string), stated]
            .into_iter()
            .flatten()
        {
            if expected.starts_with("sha256:") && expected != actual {
                return Err(OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError { expected, actual },
                )
                .into());
            }
        }
        serde_json::from_slice(&body)
            .map_err(|e| OciDistributionError::ManifestParsingError(e.to_string()).into())
    }
}

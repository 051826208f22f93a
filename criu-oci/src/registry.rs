//! Pushing checkpoint images to and pulling them from an OCI registry
//! (the distribution API) through `oci-client`. The client is async; a
//! private single-thread tokio runtime makes the API here blocking.

use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::annotations::HostFacts;
use crate::error::{Error, Result};
use crate::image::{checkpoint_layer, CheckpointImage, FetchedImage};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Plain HTTP instead of HTTPS (a registry on a private test network).
    pub plain_http: bool,
    /// A PEM CA certificate to trust besides the system's (a cluster's own CA).
    pub ca_pem: Option<Vec<u8>>,
    /// User name and password for HTTP basic authentication.
    pub basic_auth: Option<(String, String)>,
    /// Connect and read timeout (default 30 s).
    pub timeout: Option<Duration>,
}

/// What a push or pull cost.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes of the layer moved.
    pub layer_bytes: u64,
    /// Wall time of the whole operation.
    pub elapsed: Duration,
}

/// A registry client with its own runtime.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `config`.
    pub fn new(config: &RegistryConfig) -> Result<Registry> {
        // reqwest is built without a bundled crypto provider; ring it is.
        // (Fails harmlessly when one is installed already.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = config.timeout.unwrap_or(Duration::from_secs(30));
        let client_config = ClientConfig {
            protocol: if config.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: config
                .ca_pem
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // One POST and one PUT per blob instead of POST, PATCH, PUT:
            // each request costs the registry tens of ms of file work.
            use_monolithic_push: true,
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the registry client's runtime", e))?;
        Ok(Registry {
            client: Client::new(client_config),
            auth: match &config.basic_auth {
                Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
                None => RegistryAuth::Anonymous,
            },
            runtime,
        })
    }

    /// Asks the registry of `reference` for that manifest once, with the
    /// credentials: so that an unreachable registry or refused credentials
    /// are found before a move stops its source, and so that the client's
    /// first-request set-up (seen: ~0.5 s in a debug build) is not paid
    /// while the source is stopped. A manifest that does not exist yet is
    /// fine.
    pub fn ping(&self, reference: &str) -> Result<Duration> {
        let start = Instant::now();
        let r = parse(reference)?;
        match self
            .runtime
            .block_on(self.client.fetch_manifest_digest(&r, &self.auth))
        {
            Ok(_) => Ok(start.elapsed()),
            Err(e) if is_not_found(&e) => Ok(start.elapsed()),
            Err(e) => Err(classify(&r, "ping", e)),
        }
    }

    /// Pushes `image` as `reference` (`host:port/repo:tag`).
    pub fn push(&self, reference: &str, image: &CheckpointImage) -> Result<Transfer> {
        let start = Instant::now();
        let r = parse(reference)?;
        self.runtime
            .block_on(self.client.push(
                &r,
                &[image.oci_layer()],
                image.oci_config(),
                &self.auth,
                Some(image.manifest()),
            ))
            .map_err(|e| classify(&r, "push", e))?;
        Ok(Transfer {
            layer_bytes: image.layer().len() as u64,
            elapsed: start.elapsed(),
        })
    }

    /// Pulls the checkpoint image `reference`: first its manifest, whose
    /// annotations must say it is a checkpoint `host` can restore (else
    /// nothing more is downloaded), then its layer, verified against the
    /// manifest's digest before it is returned.
    pub fn pull(&self, reference: &str, host: &HostFacts) -> Result<(FetchedImage, Transfer)> {
        let start = Instant::now();
        let r = parse(reference)?;
        let (manifest, _digest, _config) = self
            .runtime
            .block_on(self.client.pull_manifest_and_config(&r, &self.auth))
            .map_err(|e| classify(&r, "pull (manifest)", e))?;
        let annotations = manifest.annotations.clone().unwrap_or_default();
        host.check(reference, &annotations)?;
        let layer = checkpoint_layer(reference, &manifest)?;
        let mut data = Vec::with_capacity(layer.size.max(0) as usize);
        self.runtime
            .block_on(self.client.pull_blob(&r, layer, &mut data))
            .map_err(|e| classify(&r, "pull (layer)", e))?;
        // oci-client checks the digest as it streams (a mismatch is
        // `Error::Digest`, see `classify`); hashing the layer a second time
        // would add a full pass to the downtime. The tests alter a blob in
        // the registry's storage and see it refused, so a client that
        // stopped checking would fail them.
        if data.len() as u64 != layer.size.max(0) as u64 {
            return Err(Error::Malformed(format!(
                "{reference}: the layer has {} bytes, its manifest says {}",
                data.len(),
                layer.size
            )));
        }
        let moved = data.len() as u64;
        Ok((
            FetchedImage {
                reference: reference.into(),
                annotations,
                layer: data,
            },
            Transfer {
                layer_bytes: moved,
                elapsed: start.elapsed(),
            },
        ))
    }
}

fn parse(reference: &str) -> Result<Reference> {
    reference.parse().map_err(|e| Error::Registry {
        what: format!("parsing {reference:?}"),
        message: format!("{e}"),
    })
}

fn is_not_found(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .all(|e| matches!(e.code, C::ManifestUnknown | C::NameUnknown | C::NotFound)),
        _ => false,
    }
}

/// Sorts the client's errors into the ones callers act on differently.
fn classify(r: &Reference, what: &str, e: OciDistributionError) -> Error {
    let registry = r.resolve_registry().to_string();
    let message = e.to_string();
    match e {
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => Error::Digest {
            what: format!("a blob of {r}"),
            expected,
            actual,
        },
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::ServerError { code: 401, .. } => {
            Error::AuthRefused { registry, message }
        }
        OciDistributionError::RequestError(ref re) if is_tls_failure(re) => Error::Tls {
            registry,
            message: error_chain(re),
        },
        OciDistributionError::RequestError(ref re) if re.is_connect() || re.is_timeout() => {
            Error::Unreachable {
                registry,
                message: error_chain(re),
            }
        }
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Unauthorized)) =>
        {
            Error::AuthRefused { registry, message }
        }
        _ => Error::Registry {
            what: format!("{what} of {r}"),
            message,
        },
    }
}

/// Whether a request failed in the TLS handshake: rustls's errors are
/// reached only as the source chain's text, so the text decides.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let chain = error_chain(e).to_lowercase();
    e.is_connect()
        && [
            "certificate",
            "tls handshake",
            "handshake failure",
            "invalidcontenttype",
        ]
        .iter()
        .any(|k| chain.contains(k))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

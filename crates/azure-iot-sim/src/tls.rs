//! HTTPS for the simulator: rustls server configuration, and a server loop that hands every request
//! the client certificate chain its TLS connection presented.
//!
//! DPS requests a client certificate but does not require one (symmetric-key and TPM devices have
//! none) and judges the chain itself against enrollments. So the verifier here accepts any chain,
//! still checks the handshake signature (the client proves it holds the leaf's key), and the
//! device API decides. Plain-HTTP tests present a chain with the [`CLIENT_CERT_HEADER`] header.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::SimConfig;
use super::server::{ConnInfo, Endpoint, SimHandle, serve_io};
use super::x509;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Host name of the DPS device endpoint the device-API listener stands for.
pub const GLOBAL_DEVICE_ENDPOINT: &str = "global.azure-devices-provisioning.net";

/// Request header carrying a client certificate chain over plain HTTP (tests only; real DPS has no
/// such header). Value: comma-separated base64 DER certificates, leaf first; or PEM text with its
/// line breaks percent-encoded (`%0A`), as nginx's `$ssl_client_escaped_cert` does.
pub const CLIENT_CERT_HEADER: &str = "x-sim-client-cert";

/// HTTPS settings of the simulator (`SimConfig::tls`): a certificate and key given inline or as
/// files, or none of them to generate a local CA and server certificate at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsSettings {
    /// Server certificate chain, PEM text.
    pub cert_pem: Option<String>,
    /// Server private key, PEM text.
    pub key_pem: Option<String>,
    /// Server certificate chain, PEM file.
    pub cert_file: Option<PathBuf>,
    /// Server private key, PEM file.
    pub key_file: Option<PathBuf>,
    /// Extra DNS names for a generated certificate (simulated host names are always included).
    pub extra_names: Vec<String>,
}

impl TlsSettings {
    /// Generated certificate (the default when `tls` is set but empty).
    pub fn generated() -> Self {
        Self::default()
    }

    /// The certificate and key to serve; generated for `names` plus `extra_names` when none given.
    pub fn material(&self, names: &[String]) -> Result<TlsMaterial, TlsError> {
        let read =
            |inline: &Option<String>, file: &Option<PathBuf>| -> Result<Option<String>, TlsError> {
                match (inline, file) {
                    (Some(text), _) => Ok(Some(text.clone())),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(Some)
                        .map_err(|e| TlsError::Pem(format!("cannot read {}: {e}", path.display()))),
                    (None, None) => Ok(None),
                }
            };
        match (
            read(&self.cert_pem, &self.cert_file)?,
            read(&self.key_pem, &self.key_file)?,
        ) {
            (Some(cert), Some(key)) => Ok(TlsMaterial::from_pem(cert, key)),
            (None, None) => {
                let mut all = names.to_vec();
                all.extend(self.extra_names.iter().cloned());
                TlsMaterial::generate(&all)
            }
            _ => Err(TlsError::Pem(
                "give both the certificate and the key, or neither".into(),
            )),
        }
    }
}

/// The rustls config for a simulator configuration (None: plain HTTP), and the CA PEM to trust
/// when the certificate was generated.
pub fn server_config_for(
    config: &SimConfig,
) -> Result<(Option<Arc<ServerConfig>>, Option<String>), TlsError> {
    let Some(settings) = &config.tls else {
        return Ok((None, None));
    };
    let mut names: Vec<String> = config
        .hubs
        .iter()
        .map(|h| h.host.to_ascii_lowercase())
        .collect();
    names.extend(config.dps.iter().map(|d| d.host_name()));
    names.push(GLOBAL_DEVICE_ENDPOINT.to_owned());
    let material = settings.material(&names)?;
    Ok((Some(material.server_config()?), material.ca_pem.clone()))
}

/// Completes the TLS handshake on an accepted connection, then serves it through the simulator
/// pipeline with the client chain in [`ConnInfo`].
pub async fn serve_tls_connection(
    handle: SimHandle,
    endpoint: Endpoint,
    config: Arc<ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let Some((tls, chain)) = handshake(&TlsAcceptor::from(config), stream, peer).await else {
        return;
    };
    let info = ConnInfo {
        peer: Some(peer),
        tls: true,
        client_certs: chain.map(|c| c.0.as_ref().clone()).unwrap_or_default(),
    };
    serve_io(handle, endpoint, info, tls, shutdown).await;
}

/// Runs the server side of a handshake (bounded in time); returns the stream and client chain.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<ClientCertChain>,
)> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let chain = tls.get_ref().1.peer_certificates().map(|certs| {
        ClientCertChain(Arc::new(
            certs.iter().map(|c| c.as_ref().to_vec()).collect(),
        ))
    });
    Some((tls, chain))
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key PEM could not be read.
    #[error("invalid TLS certificate or key: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("could not generate the TLS certificate: {0}")]
    Generate(String),
}

/// The client certificate chain of a request, leaf first (DER). Inserted as a request extension by
/// [`serve_https`] when the TLS client presented certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertChain(pub Arc<Vec<Vec<u8>>>);

/// Server certificate and key (PEM), plus the CA that issued it when generated here.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Server certificate chain, PEM (leaf first).
    pub cert_chain_pem: String,
    /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
    /// PEM of the CA clients should trust, when this material was generated.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("key_pem", &"***")
            .field("generated", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Uses a given certificate chain and key.
    pub fn from_pem(cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            ca_pem: None,
        }
    }

    /// Generates a local CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and
    /// `extra_names` (e.g. simulated hub host names). Clients trust [`TlsMaterial::ca_pem`].
    pub fn generate(extra_names: &[String]) -> Result<Self, TlsError> {
        let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let ca_key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "azure-iot-sim CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for n in extra_names {
            // Keep the first spelling of each name; host names compare case-insensitively.
            if !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
                names.push(n.clone());
            }
        }
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(names).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "azure-iot-sim");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Ok(Self {
            cert_chain_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
            key_pem: key.serialize_pem(),
            ca_pem: Some(ca_cert.pem()),
        })
    }

    /// A rustls server config that requests, but does not require, client certificates and accepts
    /// any client chain (the device API judges it). ALPN offers h2 and http/1.1.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::Pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::Pem("no certificate in the PEM text".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyClientCert {
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Accepts any client certificate chain but checks the handshake signature with the leaf's key.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients then send whatever certificate they were configured with.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust is decided per request against the enrollments, like DPS does.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The default crypto provider is installed once so other rustls users in the process (reqwest)
/// find one; the simulator itself always passes its provider explicitly.
pub fn ensure_crypto_provider() {
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
}

/// Serves `router` over HTTPS on `listener` until `shutdown` completes. Each request carries
/// `ConnectInfo<SocketAddr>` and, when the client presented certificates, a [`ClientCertChain`].
pub async fn serve_https(
    listener: TcpListener,
    router: Router,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Transient accept errors (e.g. too many open files) must not stop the server.
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    continue;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        connections.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
            };
            let chain = tls.get_ref().1.peer_certificates().map(|certs| {
                ClientCertChain(Arc::new(
                    certs.iter().map(|c| c.as_ref().to_vec()).collect(),
                ))
            });
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    if let Some(chain) = &chain {
                        req.extensions_mut().insert(chain.clone());
                    }
                    tower::ServiceExt::oneshot(router.clone(), req)
                });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(error = %e, %peer, "simulator connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}

/// The client chain of a request: from the TLS connection if present, else from
/// [`CLIENT_CERT_HEADER`]. `Ok(None)` when neither is there; `Err` when the header is malformed.
pub fn client_chain(
    extensions: &http::Extensions,
    headers: &HeaderMap,
) -> Result<Option<Vec<Vec<u8>>>, x509::CertError> {
    if let Some(ClientCertChain(chain)) = extensions.get::<ClientCertChain>() {
        return Ok(Some(chain.as_ref().clone()));
    }
    let Some(value) = headers.get(CLIENT_CERT_HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| x509::CertError::NotACertificate)?;
    parse_cert_header(text).map(Some)
}

/// Parses the [`CLIENT_CERT_HEADER`] value.
pub fn parse_cert_header(text: &str) -> Result<Vec<Vec<u8>>, x509::CertError> {
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| x509::CertError::NotACertificate)?;
    if decoded.contains("-----BEGIN") {
        return x509::parse_certificates(&decoded);
    }
    decoded
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(x509::parse_certificate)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(x509::CertError::NotACertificate)
            } else {
                Ok(v)
            }
        })
}

/// The header value presenting `chain` (leaf first) as comma-separated base64 DER.
pub fn cert_header_value(chain: &[Vec<u8>]) -> String {
    chain
        .iter()
        .map(|c| B64.encode(c))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::TestCa;
    use axum::routing::get;

    /// A handler that reports the CN of the presented leaf, or "none".
    async fn whoami(req: axum::extract::Request) -> String {
        match client_chain(req.extensions(), req.headers()) {
            Ok(Some(chain)) => x509::common_name(&chain[0])
                .ok()
                .flatten()
                .unwrap_or_default(),
            Ok(None) => "none".into(),
            Err(e) => format!("error: {e}"),
        }
    }

    async fn start(material: &TlsMaterial) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = Router::new().route("/whoami", get(whoami));
        let config = material.server_config().unwrap();
        tokio::spawn(serve_https(listener, router, config, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    #[tokio::test]
    async fn https_with_and_without_client_certificate() {
        ensure_crypto_provider();
        let material = TlsMaterial::generate(&[]).unwrap();
        let (addr, _stop) = start(&material).await;
        let ca =
            reqwest::Certificate::from_pem(material.ca_pem.as_ref().unwrap().as_bytes()).unwrap();
        let url = format!("https://localhost:{}/whoami", addr.port());

        // No client certificate: allowed, the handler sees none.
        let plain = reqwest::Client::builder()
            .tls_certs_only([ca.clone()])
            .build()
            .unwrap();
        assert_eq!(
            plain.get(&url).send().await.unwrap().text().await.unwrap(),
            "none"
        );

        // Client certificate from an unknown PKI: the handshake succeeds, the handler sees the chain.
        let root = TestCa::root("Device Root").unwrap();
        let inter = root.intermediate("Device Inter").unwrap();
        let leaf = inter.leaf("tls-device-1").unwrap();
        let identity = reqwest::Identity::from_pem(leaf.identity_pem().as_bytes()).unwrap();
        let mtls = reqwest::Client::builder()
            .tls_certs_only([ca])
            .identity(identity)
            .build()
            .unwrap();
        assert_eq!(
            mtls.get(&url).send().await.unwrap().text().await.unwrap(),
            "tls-device-1"
        );
    }

    #[test]
    fn header_accepts_base64_list_and_escaped_pem() {
        let root = TestCa::root("R").unwrap();
        let inter = root.intermediate("I").unwrap();
        let leaf = inter.leaf("hdr").unwrap();
        let value = cert_header_value(&leaf.chain_der);
        assert_eq!(parse_cert_header(&value).unwrap(), leaf.chain_der);
        let escaped = leaf.chain_pem().replace('\n', "%0A").replace(' ', "%20");
        assert_eq!(parse_cert_header(&escaped).unwrap(), leaf.chain_der);
        assert!(parse_cert_header("not-a-cert").is_err());
        assert!(parse_cert_header("").is_err());
    }

    #[test]
    fn given_pem_material_is_used() {
        let generated = TlsMaterial::generate(&[
            "myhub.azure-devices.net".into(),
            "MYHUB.azure-devices.net".into(),
            "localhost".into(),
        ])
        .unwrap();
        let given =
            TlsMaterial::from_pem(generated.cert_chain_pem.clone(), generated.key_pem.clone());
        assert!(given.server_config().is_ok());
        let bad = TlsMaterial::from_pem("nope", "nope");
        assert!(matches!(bad.server_config(), Err(TlsError::Pem(_))));
        assert!(!format!("{given:?}").contains("PRIVATE"));
    }
}

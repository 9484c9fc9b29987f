//! X.509 helpers for the simulator: certificate parsing, the `info` block DPS returns, chain
//! verification with real signature checks, and a test PKI (root → intermediate → leaf) built with rcgen.
//!
//! Certificates reach the simulator as PEM text (az CLI, Node SDK), base64 DER (C# SDK), DER from a
//! TLS handshake, or the test header of the device API; everything is normalised to DER here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// The text is neither PEM nor base64 DER.
    #[error("the certificate is neither PEM nor base64-encoded DER")]
    NotACertificate,
    /// The DER could not be parsed as an X.509 certificate.
    #[error("the certificate could not be parsed: {0}")]
    Parse(String),
    /// Generating a test certificate failed.
    #[error("could not generate a test certificate: {0}")]
    Generate(String),
}

/// The certificate `info` block DPS returns in place of the raw certificate (X509CertificateInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject distinguished name, most specific RDN first (`CN=…, O=…`), as .NET prints it.
    pub subject_name: String,
    /// SHA-1 of the DER, upper-case hex without separators.
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER, upper-case hex without separators.
    pub sha256_thumbprint: String,
    /// Issuer distinguished name, same format as the subject.
    pub issuer_name: String,
    /// Start of validity.
    pub not_before_utc: DateTime<Utc>,
    /// End of validity.
    pub not_after_utc: DateTime<Utc>,
    /// Serial number, upper-case hex of the DER integer bytes.
    pub serial_number: String,
    /// X.509 version as people count it (3 for a v3 certificate).
    pub version: i32,
}

/// Upper-case hex without separators, the way Azure prints thumbprints.
fn upper_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02X}");
            s
        })
}

/// SHA-1 thumbprint of a DER certificate (upper-case hex).
pub fn sha1_thumbprint(der: &[u8]) -> String {
    upper_hex(&Sha1::digest(der))
}

/// SHA-256 thumbprint of a DER certificate (upper-case hex).
pub fn sha256_thumbprint(der: &[u8]) -> String {
    upper_hex(&Sha256::digest(der))
}

/// True when two thumbprints are equal, ignoring case and `:`/space separators.
pub fn thumbprints_equal(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, ':' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>()
    };
    norm(a) == norm(b)
}

/// All certificates in a text: one or more PEM blocks, or one base64 DER blob. Returns DER, in order.
pub fn parse_certificates(text: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let trimmed = text.trim();
    if trimmed.contains("-----BEGIN") {
        let mut out = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(trimmed.as_bytes()) {
            let pem = pem.map_err(|e| CertError::Parse(e.to_string()))?;
            if pem.label == "CERTIFICATE" {
                out.push(pem.contents);
            }
        }
        if out.is_empty() {
            return Err(CertError::NotACertificate);
        }
        for der in &out {
            parse_der(der)?;
        }
        return Ok(out);
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    let der = B64
        .decode(compact)
        .map_err(|_| CertError::NotACertificate)?;
    parse_der(&der)?;
    Ok(vec![der])
}

/// The first certificate of a PEM or base64-DER text, as DER.
pub fn parse_certificate(text: &str) -> Result<Vec<u8>, CertError> {
    parse_certificates(text)?
        .into_iter()
        .next()
        .ok_or(CertError::NotACertificate)
}

/// Parses DER, rejecting trailing garbage.
fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(
            "trailing data after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// PEM text of a DER certificate (64-column base64, `\n` line ends).
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    // base64 output is ASCII, so splitting on byte boundaries is safe.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A distinguished name as DPS (a .NET service) prints it: most specific RDN first
/// (`CN=leaf, O=Org, C=US`), `S` for state, `E` for e-mail, `#`-prefixed hex for non-string values.
fn dotnet_name(name: &X509Name<'_>) -> String {
    let registry = oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = match oid2abbrev(attr.attr_type(), registry) {
                        Ok("ST") => "S".to_owned(),
                        Ok("emailAddress" | "Email") => "E".to_owned(),
                        Ok(a) => a.to_owned(),
                        Err(_) => format!("OID.{}", attr.attr_type()),
                    };
                    let value = attr
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|_| format!("#{}", upper_hex(attr.attr_value().data)));
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(", ")
}

/// Converts a certificate time to chrono.
fn to_utc(t: &x509_parser::time::ASN1Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
}

/// The DPS `info` block of a DER certificate.
pub fn certificate_info(der: &[u8]) -> Result<CertificateInfo, CertError> {
    let cert = parse_der(der)?;
    Ok(CertificateInfo {
        subject_name: dotnet_name(cert.subject()),
        sha1_thumbprint: sha1_thumbprint(der),
        sha256_thumbprint: sha256_thumbprint(der),
        issuer_name: dotnet_name(cert.issuer()),
        not_before_utc: to_utc(&cert.validity().not_before),
        not_after_utc: to_utc(&cert.validity().not_after),
        serial_number: upper_hex(cert.raw_serial()),
        // X509Version counts from 0 (v3 = 2).
        version: i32::try_from(cert.version().0).unwrap_or(0) + 1,
    })
}

/// The DPS `info` block of a PEM or base64-DER certificate text.
pub fn info_from_text(text: &str) -> Result<CertificateInfo, CertError> {
    certificate_info(&parse_certificate(text)?)
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Result<Option<String>, CertError> {
    let cert = parse_der(der)?;
    Ok(cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned))
}

/// True when `issuer_der` issued `child_der`: the child's issuer name equals the issuer's subject and
/// the child's signature verifies with the issuer's public key.
pub fn is_issued_by(child_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok(child), Ok(issuer)) = (parse_der(child_der), parse_der(issuer_der)) else {
        return false;
    };
    child.issuer().as_raw() == issuer.subject().as_raw()
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}

/// True when `now` lies within the certificate's validity period.
pub fn is_valid_at(der: &[u8], now: DateTime<Utc>) -> bool {
    parse_der(der).is_ok_and(|c| {
        let v = c.validity();
        to_utc(&v.not_before) <= now && now <= to_utc(&v.not_after)
    })
}

/// Result of judging a presented chain against one trust anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// The leaf chains to the anchor; `depth` = number of issuing steps (1: the anchor signed the leaf).
    Chains {
        /// Issuing steps from the leaf up to the anchor.
        depth: usize,
    },
    /// The leaf or an intermediate on the path is outside its validity period.
    Expired,
    /// No path from the leaf to the anchor through the presented certificates.
    NoPath,
}

/// The issuing path of a presented chain, leaf first: each next element issued the previous one
/// (real signature check). Certificates that are not on the path are ignored; order of the
/// presented intermediates does not matter.
pub fn issuing_path(presented: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let Some(leaf) = presented.first() else {
        return Vec::new();
    };
    let mut path = vec![leaf.clone()];
    let mut remaining: Vec<&Vec<u8>> = presented.iter().skip(1).collect();
    loop {
        let current = path.last().cloned().unwrap_or_default();
        let Some(pos) = remaining
            .iter()
            .position(|c| *c != &current && is_issued_by(&current, c))
        else {
            break;
        };
        path.push(remaining.remove(pos).clone());
    }
    path
}

/// Does the presented chain (leaf first, then intermediates in any order) lead to `anchor_der`?
///
/// The anchor may be one of the presented certificates or only known to the verifier; either way the
/// last link is checked with the anchor's own public key. Every certificate on the path below the
/// anchor must be valid at `now` (the anchor's own validity is DPS's concern at upload time).
pub fn check_chain(presented: &[Vec<u8>], anchor_der: &[u8], now: DateTime<Utc>) -> ChainCheck {
    let path = issuing_path(presented);
    for (i, cert) in path.iter().enumerate() {
        if i > 0 && cert.as_slice() == anchor_der {
            return judge_validity(&path[..i], i, now);
        }
        if is_issued_by(cert, anchor_der) {
            return judge_validity(&path[..=i], i + 1, now);
        }
    }
    ChainCheck::NoPath
}

/// `Chains { depth }` when every certificate is valid at `now`, else `Expired`.
fn judge_validity(below_anchor: &[Vec<u8>], depth: usize, now: DateTime<Utc>) -> ChainCheck {
    if below_anchor.iter().all(|c| is_valid_at(c, now)) {
        ChainCheck::Chains { depth }
    } else {
        ChainCheck::Expired
    }
}

/// A certificate authority of the test PKI, able to issue intermediates and leaves.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_der: Vec<u8>,
    key_pem: String,
    /// This CA and its issuers up to, not including, the self-signed root (DER, this CA first).
    chain_below_root: Vec<Vec<u8>>,
    next_serial: std::sync::atomic::AtomicU64,
    serial_prefix: u64,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("sha1", &sha1_thumbprint(&self.cert_der))
            .finish_non_exhaustive()
    }
}

/// A leaf certificate of the test PKI with its key and the chain a device presents.
#[derive(Clone)]
pub struct TestLeaf {
    /// Registration id (= subject CN).
    pub common_name: String,
    /// Leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Leaf then intermediates (not the root), DER, as a device sends them.
    pub chain_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TestLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestLeaf")
            .field("common_name", &self.common_name)
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

impl TestLeaf {
    /// Leaf then intermediates as one PEM text (what a TLS client identity file holds, minus the key).
    pub fn chain_pem(&self) -> String {
        self.chain_der.iter().map(|d| der_to_pem(d)).collect()
    }

    /// Key PEM followed by the chain PEM: the identity format reqwest's `Identity::from_pem` takes.
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.key_pem, self.chain_pem())
    }
}

/// Validity of generated certificates: fixed so test output is stable.
fn default_validity() -> (NaiveDate, NaiveDate) {
    // Both dates exist, so the constructors return Some.
    let nb = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default();
    let na = NaiveDate::from_ymd_opt(2049, 12, 31).unwrap_or_default();
    (nb, na)
}

/// A calendar date as rcgen wants it (midnight UTC).
fn rcgen_date(d: NaiveDate) -> Result<(i32, u8, u8), CertError> {
    let m = u8::try_from(d.month()).map_err(|_| CertError::Generate("bad month".into()))?;
    let day = u8::try_from(d.day()).map_err(|_| CertError::Generate("bad day".into()))?;
    Ok((d.year(), m, day))
}

/// Maps rcgen errors into ours.
fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

/// Serial prefix from a name, so two CAs with different names issue different serials.
fn name_hash(name: &str) -> u64 {
    let d = Sha256::digest(name.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) >> 8
}

impl TestCa {
    /// A new self-signed root CA with the given common name.
    pub fn root(common_name: &str) -> Result<Self, CertError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let params = Self::ca_params(common_name, 1);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Self::from_parts(
            params,
            key,
            cert.der().to_vec(),
            None,
            common_name,
        ))
    }

    /// A new intermediate CA signed by this CA.
    pub fn intermediate(&self, common_name: &str) -> Result<Self, CertError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let params = Self::ca_params(common_name, self.take_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let der = cert.der().to_vec();
        Ok(Self::from_parts(
            params,
            key,
            der,
            Some(self.chain_below_root.clone()),
            common_name,
        ))
    }

    /// A leaf with CN = `registration_id`, valid 2024–2049.
    pub fn leaf(&self, registration_id: &str) -> Result<TestLeaf, CertError> {
        let (nb, na) = default_validity();
        self.leaf_with_validity(registration_id, nb, na)
    }

    /// A leaf valid only between two dates (e.g. an already expired one).
    pub fn leaf_with_validity(
        &self,
        registration_id: &str,
        not_before: NaiveDate,
        not_after: NaiveDate,
    ) -> Result<TestLeaf, CertError> {
        let (y, m, d) = rcgen_date(not_before)?;
        let not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = rcgen_date(not_after)?;
        let not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, registration_id);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(self.take_serial().into());
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let der = cert.der().to_vec();
        let mut chain_der = vec![der.clone()];
        chain_der.extend(self.chain_below_root.iter().cloned());
        Ok(TestLeaf {
            common_name: registration_id.to_owned(),
            cert_pem: der_to_pem(&der),
            cert_der: der,
            key_pem: key.serialize_pem(),
            chain_der,
        })
    }

    /// This CA's certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// This CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        der_to_pem(&self.cert_der)
    }

    /// This CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Parameters of a CA certificate.
    fn ca_params(common_name: &str, serial: u64) -> rcgen::CertificateParams {
        let (nb, na) = default_validity();
        let date = |d: NaiveDate| {
            // Dates from default_validity are in range for u8 month/day.
            let (y, m, dd) = rcgen_date(d).unwrap_or((2024, 1, 1));
            rcgen::date_time_ymd(y, m, dd)
        };
        let (nb, na) = (date(nb), date(na));
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "azure-iot-sim test PKI");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = nb;
        params.not_after = na;
        params.serial_number = Some(serial.into());
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// Builds the struct once the certificate exists.
    fn from_parts(
        params: rcgen::CertificateParams,
        key: rcgen::KeyPair,
        der: Vec<u8>,
        parent_chain: Option<Vec<Vec<u8>>>,
        common_name: &str,
    ) -> Self {
        let key_pem = key.serialize_pem();
        // A root is not sent by devices; an intermediate is sent with its own issuers below the root.
        let mut chain_below_root = Vec::new();
        if let Some(parents) = parent_chain {
            chain_below_root.push(der.clone());
            chain_below_root.extend(parents);
        }
        Self {
            issuer: rcgen::Issuer::new(params, key),
            cert_der: der,
            key_pem,
            chain_below_root,
            next_serial: std::sync::atomic::AtomicU64::new(1),
            serial_prefix: name_hash(common_name),
        }
    }

    /// A serial number unique within this CA (prefix from the CA name, counter below).
    fn take_serial(&self) -> u64 {
        let n = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Keep the top bit clear so the DER integer stays positive and short.
        ((self.serial_prefix << 20) ^ n) & 0x7FFF_FFFF_FFFF_FFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn info_matches_certificate() {
        let root = TestCa::root("Test Root").unwrap();
        let inter = root.intermediate("Test Intermediate").unwrap();
        let leaf = inter.leaf("device-001").unwrap();
        let info = info_from_text(&leaf.cert_pem).unwrap();
        assert_eq!(info.subject_name, "CN=device-001");
        assert_eq!(
            info.issuer_name,
            "CN=Test Intermediate, O=azure-iot-sim test PKI"
        );
        assert_eq!(info.version, 3);
        assert_eq!(info.sha1_thumbprint.len(), 40);
        assert_eq!(info.sha256_thumbprint.len(), 64);
        assert!(
            info.sha1_thumbprint
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert_eq!(info.sha1_thumbprint, sha1_thumbprint(&leaf.cert_der));
        assert_eq!(
            info.not_before_utc.to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(info.not_after_utc.to_rfc3339(), "2049-12-31T00:00:00+00:00");
        assert!(!info.serial_number.is_empty());
        let json = serde_json::to_value(&info).unwrap();
        for key in [
            "subjectName",
            "sha1Thumbprint",
            "sha256Thumbprint",
            "issuerName",
            "notBeforeUtc",
            "notAfterUtc",
            "serialNumber",
            "version",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
    }

    /// A fixed certificate made with `openssl req -x509` (P-256, subject with C, ST, O, emailAddress
    /// and CN); the expected thumbprints are `openssl x509 -fingerprint` output without the colons.
    const FIXTURE_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIICJjCCAc2gAwIBAgIEChssPTAKBggqhkjOPQQDAjBxMQswCQYDVQQGEwJVUzET\n\
MBEGA1UECAwKV2FzaGluZ3RvbjEQMA4GA1UECgwHQ29udG9zbzEiMCAGCSqGSIb3\n\
DQEJARYTb3BzQGNvbnRvc28uZXhhbXBsZTEXMBUGA1UEAwwOZml4dHVyZS1kZXZp\n\
Y2UwHhcNMjYxMTI4MDYyNzU5WhcNMjYxMTI5MDYyNzU5WjBxMQswCQYDVQQGEwJV\n\
UzETMBEGA1UECAwKV2FzaGluZ3RvbjEQMA4GA1UECgwHQ29udG9zbzEiMCAGCSqG\n\
SIb3DQEJARYTb3BzQGNvbnRvc28uZXhhbXBsZTEXMBUGA1UEAwwOZml4dHVyZS1k\n\
ZXZpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARRPwVcHcdD5lmpUxQBR3/C\n\
+y1YYYonQbzUZbpT4yYOWa/uYZTMWhK8ZHwRv11k4a0CB7p2be+aZRD3BACCRp+Z\n\
o1MwUTAdBgNVHQ4EFgQU+xnMPPCoXYMvSsgi9XEYFMscY8owHwYDVR0jBBgwFoAU\n\
+xnMPPCoXYMvSsgi9XEYFMscY8owDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD\n\
AgNHADBEAiBHt2N4mfVmBnPxPm0apJ91Ur74VvpvcvsoM7zd1OWV/AIgf3vxJmtI\n\
HM0GdQWRyrl5Xgs4FSid0KmEJE+vTSd0TmA=\n\
-----END CERTIFICATE-----";

    /// The exact `info` JSON DPS returns for the fixture: field names (in serde_json's key order), upper-case hex,
    /// .NET name rendering (most specific first, `S`/`E`), whole-second `Z` dates.
    const FIXTURE_INFO_JSON: &str = concat!(
        r#"{"issuerName":"CN=fixture-device, E=ops@contoso.example, O=Contoso, S=Washington, C=US","#,
        r#""notAfterUtc":"2026-11-29T06:27:59Z","notBeforeUtc":"2026-11-28T06:27:59Z","#,
        r#""serialNumber":"0A1B2C3D","#,
        r#""sha1Thumbprint":"5EDFAB1C76A7AC06490A89081EE26DEC70E19C8A","#,
        r#""sha256Thumbprint":"2C86FEEFF77A7EEB98A53F5EA5041068C1079AA4A63245BE3FF29812781345D5","#,
        r#""subjectName":"CN=fixture-device, E=ops@contoso.example, O=Contoso, S=Washington, C=US","#,
        r#""version":3}"#
    );

    #[test]
    fn info_json_of_a_fixed_certificate_is_exact() {
        let der = parse_certificate(FIXTURE_PEM).unwrap();
        // The DPS store embeds the info as a serde_json::Value, so compare that rendering.
        let value = serde_json::to_value(certificate_info(&der).unwrap()).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), FIXTURE_INFO_JSON);
        assert_eq!(
            common_name(&der).unwrap().as_deref(),
            Some("fixture-device")
        );
    }

    #[test]
    fn pem_and_base64_der_give_the_same_info() {
        let ck = rcgen::generate_simple_self_signed(vec!["device-1".to_string()]).unwrap();
        let der = ck.cert.der().to_vec();
        assert_eq!(parse_certificate(&ck.cert.pem()).unwrap(), der);
        assert_eq!(parse_certificate(&B64.encode(&der)).unwrap(), der);
        let info = certificate_info(&der).unwrap();
        assert_eq!(info.sha1_thumbprint.len(), 40);
        assert_eq!(info.sha256_thumbprint.len(), 64);
        assert_eq!(info.version, 3);
        assert_eq!(info.sha1_thumbprint, sha1_thumbprint(&der));
        assert_eq!(
            common_name(&der).unwrap().as_deref(),
            Some("rcgen self signed cert")
        );
    }

    #[test]
    fn names_are_printed_most_specific_first() {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "US");
        dn.push(rcgen::DnType::OrganizationName, "Contoso");
        dn.push(rcgen::DnType::CommonName, "leaf-7");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = certificate_info(cert.der()).unwrap();
        assert_eq!(info.subject_name, "CN=leaf-7, O=Contoso, C=US");
        assert_eq!(info.issuer_name, "CN=leaf-7, O=Contoso, C=US");
        assert_eq!(common_name(cert.der()).unwrap().as_deref(), Some("leaf-7"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_certificate("not a cert!").is_err());
        assert!(certificate_info(b"xyz").is_err());
    }

    #[test]
    fn thumbprint_is_sha1_of_der_independently_computed() {
        // "abc" SHA-1 / SHA-256 vectors from FIPS 180.
        assert_eq!(
            sha1_thumbprint(b"abc"),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
        assert_eq!(
            sha256_thumbprint(b"abc"),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
        assert!(thumbprints_equal("a9:99:3e", "A9993E"));
    }

    #[test]
    fn accepts_base64_der_and_multi_pem() {
        let root = TestCa::root("R").unwrap();
        let inter = root.intermediate("I").unwrap();
        let leaf = inter.leaf("dev").unwrap();
        let b64 = B64.encode(&leaf.cert_der);
        assert_eq!(parse_certificate(&b64).unwrap(), leaf.cert_der);
        let all = parse_certificates(&leaf.chain_pem()).unwrap();
        assert_eq!(all, leaf.chain_der);
        assert_eq!(all.len(), 2);
        assert_eq!(parse_certificate("hello"), Err(CertError::NotACertificate));
        assert!(matches!(
            parse_certificate("aGVsbG8="),
            Err(CertError::Parse(_))
        ));
        assert_eq!(common_name(&leaf.cert_der).unwrap().as_deref(), Some("dev"));
    }

    #[test]
    fn chain_verification_uses_signatures() {
        let root = TestCa::root("Root A").unwrap();
        let inter = root.intermediate("Inter A").unwrap();
        let other_root = TestCa::root("Root B").unwrap();
        // Same subject name as "Inter A" but a different key: name matching alone would accept it.
        let impostor = other_root.intermediate("Inter A").unwrap();
        let leaf = inter.leaf("dev-1").unwrap();

        assert!(is_issued_by(&leaf.cert_der, inter.cert_der()));
        assert!(!is_issued_by(&leaf.cert_der, impostor.cert_der()));
        assert_eq!(
            check_chain(&leaf.chain_der, inter.cert_der(), now()),
            ChainCheck::Chains { depth: 1 }
        );
        assert_eq!(
            check_chain(&leaf.chain_der, root.cert_der(), now()),
            ChainCheck::Chains { depth: 2 }
        );
        assert_eq!(
            check_chain(&leaf.chain_der, impostor.cert_der(), now()),
            ChainCheck::NoPath
        );
        assert_eq!(
            check_chain(&leaf.chain_der, other_root.cert_der(), now()),
            ChainCheck::NoPath
        );
        // Without the intermediate the root cannot be reached.
        assert_eq!(
            check_chain(&leaf.chain_der[..1], root.cert_der(), now()),
            ChainCheck::NoPath
        );
    }

    #[test]
    fn expired_leaf_is_reported() {
        let root = TestCa::root("Root").unwrap();
        let inter = root.intermediate("Inter").unwrap();
        let leaf = inter
            .leaf_with_validity(
                "old",
                NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
                NaiveDate::from_ymd_opt(2021, 1, 1).unwrap(),
            )
            .unwrap();
        assert_eq!(
            check_chain(&leaf.chain_der, inter.cert_der(), now()),
            ChainCheck::Expired
        );
        assert!(!is_valid_at(&leaf.cert_der, now()));
    }

    #[test]
    fn serials_are_unique_and_chain_excludes_root() {
        let root = TestCa::root("Root").unwrap();
        let inter = root.intermediate("Inter").unwrap();
        let a = inter.leaf("a").unwrap();
        let b = inter.leaf("b").unwrap();
        assert_ne!(
            certificate_info(&a.cert_der).unwrap().serial_number,
            certificate_info(&b.cert_der).unwrap().serial_number
        );
        assert_eq!(a.chain_der.len(), 2);
        assert_eq!(a.chain_der[1], inter.cert_der());
        assert!(a.identity_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        // A leaf issued directly by the root presents only itself.
        let direct = root.leaf("direct").unwrap();
        assert_eq!(direct.chain_der.len(), 1);
        assert_eq!(
            check_chain(&direct.chain_der, root.cert_der(), now()),
            ChainCheck::Chains { depth: 1 }
        );
    }
}

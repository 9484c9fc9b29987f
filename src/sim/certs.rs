//! Certificates given in attestations: decoding (PEM text or base64 DER) and the `info` DPS returns.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A certificate could not be decoded or parsed.
#[derive(Debug, thiserror::Error)]
#[error("the certificate is neither PEM nor base64 DER X.509: {0}")]
pub struct CertError(String);

/// DER bytes of a certificate given as PEM text or as base64 DER (both are accepted by DPS clients).
pub fn decode_certificate(text: &str) -> Result<Vec<u8>, CertError> {
    let trimmed = text.trim();
    if trimmed.contains("-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(trimmed.as_bytes())
            .map_err(|e| CertError(e.to_string()))?;
        return Ok(pem.contents);
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(compact).map_err(|e| CertError(e.to_string()))
}

/// Upper-case hex of bytes.
fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// SHA-1 thumbprint (upper-case hex) of DER bytes, as IoT Hub and DPS print it.
pub fn sha1_thumbprint(der: &[u8]) -> String {
    hex_upper(&Sha1::digest(der))
}

/// SHA-256 thumbprint (upper-case hex) of DER bytes.
pub fn sha256_thumbprint(der: &[u8]) -> String {
    hex_upper(&Sha256::digest(der))
}

fn utc(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A distinguished name as DPS (a .NET service) prints it: most specific RDN first
/// (`CN=leaf, O=Org, C=US`), `S` for state and `E` for e-mail.
pub fn dotnet_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let abbrev = match x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                    {
                        Ok("ST") => "S".to_string(),
                        Ok("emailAddress") | Ok("Email") => "E".to_string(),
                        Ok(a) => a.to_string(),
                        Err(_) => format!("OID.{}", attr.attr_type()),
                    };
                    let value = match attr.as_str() {
                        Ok(v) => v.to_string(),
                        Err(_) => format!("#{}", hex_upper(attr.attr_value().data)),
                    };
                    format!("{abbrev}={value}")
                })
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(", ")
}

/// The DPS `X509CertificateInfo` of a DER certificate.
pub fn certificate_info(der: &[u8]) -> Result<Value, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError(e.to_string()))?;
    Ok(json!({
        "subjectName": dotnet_name(cert.subject()),
        "sha1Thumbprint": sha1_thumbprint(der),
        "sha256Thumbprint": sha256_thumbprint(der),
        "issuerName": dotnet_name(cert.issuer()),
        "notBeforeUtc": utc(cert.validity().not_before.timestamp()),
        "notAfterUtc": utc(cert.validity().not_after.timestamp()),
        "serialNumber": hex_upper(cert.raw_serial()),
        // x509 encodes v3 as 2; DPS reports the human version number.
        "version": cert.version().0 + 1,
    }))
}

/// The subject common name of a DER certificate, if any.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(cn: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec![cn.to_string()]).unwrap()
    }

    #[test]
    fn pem_and_base64_der_give_the_same_info() {
        let ck = self_signed("device-1");
        let pem = ck.cert.pem();
        let der = ck.cert.der().to_vec();
        let from_pem = decode_certificate(&pem).unwrap();
        let from_b64 = decode_certificate(&B64.encode(&der)).unwrap();
        assert_eq!(from_pem, der);
        assert_eq!(from_b64, der);
        let info = certificate_info(&der).unwrap();
        assert_eq!(info["sha1Thumbprint"].as_str().unwrap().len(), 40);
        assert_eq!(info["sha256Thumbprint"].as_str().unwrap().len(), 64);
        assert_eq!(info["version"], 3);
        assert_eq!(info["sha1Thumbprint"], sha1_thumbprint(&der));
        assert_eq!(common_name(&der).as_deref(), Some("rcgen self signed cert"));
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
        assert_eq!(info["subjectName"], "CN=leaf-7, O=Contoso, C=US");
        assert_eq!(info["issuerName"], "CN=leaf-7, O=Contoso, C=US");
        assert_eq!(common_name(cert.der()).as_deref(), Some("leaf-7"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_certificate("not a cert!").is_err());
        assert!(certificate_info(b"xyz").is_err());
    }
}

//! Reading what the service needs from a device's leaf certificate.

use x509_parser::pem::parse_x509_pem;

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a PEM certificate.
    #[error("is not a PEM certificate ({0})")]
    NotPem(String),
    /// Not a parsable X.509 certificate.
    #[error("is not a valid X.509 certificate ({0})")]
    NotX509(String),
    /// The subject has no common name.
    #[error("has no subject common name (CN)")]
    NoCommonName,
}

/// The subject common name of a PEM certificate (for a DPS X.509 device: its registration id).
pub fn leaf_common_name(pem: &str) -> Result<String, CertError> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| CertError::NotPem(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::NotX509(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(CertError::NoCommonName)?;
    Ok(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name() {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "x509-dev-0007");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(leaf_common_name(&cert.pem()).unwrap(), "x509-dev-0007");
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            leaf_common_name("hello"),
            Err(CertError::NotPem(_))
        ));
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(leaf_common_name(bogus).is_err());
    }
}

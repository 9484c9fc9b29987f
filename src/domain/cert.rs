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
    /// Not exactly one PEM block, or a block that is not a certificate.
    #[error("must hold exactly one PEM certificate, the device's leaf; found {0}")]
    NotOneCertificate(String),
    /// A CA certificate (basicConstraints CA:TRUE), not a device's leaf.
    #[error(
        "is a CA certificate (basicConstraints CA:TRUE); give the device's own end-entity certificate, not a signing certificate"
    )]
    CaCertificate,
}

/// What the service reads from a device's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Subject common name (for DPS X.509 devices, the registration id).
    pub common_name: String,
    /// Issuer distinguished name, as `CN=…, O=…` (RFC 4514-like, as x509-parser prints it).
    pub issuer: String,
}

/// Checks that `pem` is exactly one end-entity X.509 certificate and reads its CN and issuer.
pub fn parse_leaf(pem: &str) -> Result<Leaf, CertError> {
    let mut blocks = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        blocks.push(block.map_err(|e| CertError::NotPem(e.to_string()))?);
    }
    let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
    match labels.as_slice() {
        ["CERTIFICATE"] => {}
        [] => return Err(CertError::NotPem("no PEM block".into())),
        other => {
            // Never echo the blocks themselves: one could be a private key.
            return Err(CertError::NotOneCertificate(format!(
                "{} PEM blocks ({})",
                other.len(),
                other.join(", ")
            )));
        }
    }
    let cert = blocks[0]
        .parse_x509()
        .map_err(|e| CertError::NotX509(e.to_string()))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| CertError::NotX509(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(CertError::CaCertificate);
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(CertError::NoCommonName)?
        .to_string();
    Ok(Leaf {
        common_name,
        issuer: cert.issuer().to_string(),
    })
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

    fn cert(cn: &str, ca: bool) -> String {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_leaf_is_exactly_one_end_entity_certificate() {
        let leaf = parse_leaf(&cert("dev-1", false)).unwrap();
        assert_eq!(leaf.common_name, "dev-1");
        assert_eq!(leaf.issuer, "CN=dev-1");
        assert_eq!(
            parse_leaf(&cert("dev-1", true)),
            Err(CertError::CaCertificate)
        );
        let two = format!("{}{}", cert("dev-1", false), cert("dev-2", false));
        assert!(matches!(
            parse_leaf(&two),
            Err(CertError::NotOneCertificate(m)) if m.contains("2 PEM blocks")
        ));
        let with_key = format!(
            "{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            cert("dev-1", false)
        );
        let err = parse_leaf(&with_key).unwrap_err();
        assert!(
            err.to_string().contains("CERTIFICATE, PRIVATE KEY"),
            "{err}"
        );
        assert!(!err.to_string().contains("AAAA"));
        assert!(parse_leaf("hello").is_err());
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

//! Admission: a group device's leaf certificate must have been issued under its group's signing certificate.

use crate::azure::models::{EnrollmentGroup, X509CertificateInfo};
use crate::domain::job::{DeprovisionRequest, FieldError, Target};

/// A distinguished name compared as a set of `type=value` parts, case-insensitively: DPS and x509-parser may
/// order or space them differently.
fn dn_key(dn: &str) -> Vec<String> {
    let mut parts: Vec<String> = dn
        .split([',', ';'])
        .map(|p| p.trim().to_ascii_lowercase().replace(" = ", "="))
        .filter(|p| !p.is_empty())
        .collect();
    parts.sort();
    parts
}

/// Whether a leaf with `leaf_issuer` was issued by one of `signing` (directly).
fn issued_by(leaf_issuer: &str, signing: &[&X509CertificateInfo]) -> bool {
    let issuer = dn_key(leaf_issuer);
    signing.iter().any(|s| dn_key(&s.subject_name) == issuer)
}

/// For a group device with `certificate_pem` and without `force`: the field error when the leaf's issuer is
/// not the subject of `group`'s primary or secondary signing certificate as DPS reports it (a tombstone for
/// a certificate the device does not hold would block nothing). `None` when it matches, and when the group
/// has no certificate info to compare with (CA references, symmetric keys).
pub(super) fn leaf_not_under_group(
    request: &DeprovisionRequest,
    group: &EnrollmentGroup,
) -> Option<FieldError> {
    let Target::GroupDevice(t) = &request.target else {
        return None;
    };
    let pem = t.certificate_pem.as_deref()?;
    if request.force {
        return None;
    }
    let leaf = crate::domain::cert::parse_leaf(pem).ok()?;
    let signing = group
        .attestation
        .x509
        .as_ref()?
        .signing_certificates
        .as_ref()?;
    let infos: Vec<&X509CertificateInfo> = [&signing.primary, &signing.secondary]
        .into_iter()
        .flatten()
        .filter_map(|c| c.info.as_ref())
        .collect();
    if infos.is_empty() || issued_by(&leaf.issuer, &infos) {
        return None;
    }
    let names: Vec<String> = infos
        .iter()
        .map(|i| format!("`{}` (SHA-1 {})", i.subject_name, i.sha1_thumbprint))
        .collect();
    Some(FieldError::new(
        "target.certificate_pem",
        format!(
            "was issued by `{}`, not by group `{}`'s signing certificate {}; a block for a certificate the \
             device does not hold would not stop it. Give the device's own leaf, or `force: true` to block it anyway",
            leaf.issuer,
            t.group_id,
            names.join(" or ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_compare_as_sets() {
        let info = X509CertificateInfo {
            subject_name: "CN=Fleet Intermediate, O=Contoso".into(),
            ..X509CertificateInfo::default()
        };
        assert!(issued_by("O=Contoso, CN=fleet intermediate", &[&info]));
        assert!(!issued_by("CN=Other CA, O=Contoso", &[&info]));
        assert!(!issued_by("CN=Fleet Intermediate", &[&info]));
    }
}

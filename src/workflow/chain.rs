//! Finding enabled enrollment groups higher in a group's certificate chain (pure).
//!
//! Deleting a group lets its devices enroll again when an enabled group exists for a certificate higher
//! in their chain. DPS shows each group's signing certificate as `info` (subject and issuer names), so the
//! chain is followed by names: the parent of a certificate is the group whose subject is its issuer.

use std::collections::HashSet;

/// What the chain check needs of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCert {
    /// Group id.
    pub group_id: String,
    /// Signing certificate subject name.
    pub subject: String,
    /// Signing certificate issuer name.
    pub issuer: String,
    /// Whether the group is enabled.
    pub enabled: bool,
}

fn norm(name: &str) -> String {
    name.split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// Enabled groups whose signing certificate is an ancestor of `of`'s (issuer of, issuer of issuer, …),
/// in chain order. `of` itself and self-signed loops are ignored.
pub fn enabled_ancestors(of: &GroupCert, groups: &[GroupCert]) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen_subjects = HashSet::from([norm(&of.subject)]);
    let mut issuer = norm(&of.issuer);
    // A root is its own issuer: stop there.
    while !seen_subjects.contains(&issuer) {
        seen_subjects.insert(issuer.clone());
        let parents: Vec<&GroupCert> = groups
            .iter()
            .filter(|g| g.group_id != of.group_id && norm(&g.subject) == issuer)
            .collect();
        let Some(next) = parents.first().map(|g| norm(&g.issuer)) else {
            break;
        };
        found.extend(
            parents
                .iter()
                .filter(|g| g.enabled)
                .map(|g| g.group_id.clone()),
        );
        issuer = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: &str, subject: &str, issuer: &str, enabled: bool) -> GroupCert {
        GroupCert {
            group_id: id.into(),
            subject: subject.into(),
            issuer: issuer.into(),
            enabled,
        }
    }

    #[test]
    fn finds_enabled_groups_up_the_chain() {
        let me = g("leaf-ca", "CN=Intermediate 2", "CN=Intermediate 1", false);
        let groups = vec![
            me.clone(),
            g("mid", "CN=Intermediate 1", "CN=Root", false),
            g("root", "cn=root", "CN=Root", true),
            g("sibling", "CN=Other", "CN=Root", true),
        ];
        assert_eq!(enabled_ancestors(&me, &groups), ["root"]);
    }

    #[test]
    fn nothing_above_a_root_or_unrelated() {
        let root = g("root", "CN=Root", "CN=Root", true);
        assert!(enabled_ancestors(&root, std::slice::from_ref(&root)).is_empty());
        let me = g("x", "CN=A", "CN=B", true);
        assert!(enabled_ancestors(&me, &[g("y", "CN=C", "CN=C", true)]).is_empty());
    }

    #[test]
    fn cycles_terminate() {
        let me = g("a", "CN=A", "CN=B", true);
        let groups = vec![g("b", "CN=B", "CN=A", true)];
        assert_eq!(enabled_ancestors(&me, &groups), ["b"]);
    }
}

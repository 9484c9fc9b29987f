//! Shared by the simulator's test binaries.

/// Says a check is skipped because `missing` is not there; under `CI=true` nothing may pass by
/// skipping, so there it fails the test instead, naming what is missing.
pub fn skip(missing: &str, unchecked: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing}, and CI=true forbids skipping: {unchecked} would go unchecked");
    }
    eprintln!("SKIPPED: {missing}; {unchecked} not checked");
}

/// The folder of the official swagger files, from `AZURE_SPECS_DIR` (the test command sets it to
/// `../shared/azure-specs` when that exists).
// Not every test binary that includes this module reads the swagger files.
#[allow(dead_code)]
pub fn specs_dir(unchecked: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("AZURE_SPECS_DIR").map(std::path::PathBuf::from) {
        Some(d) if d.is_dir() => Some(d),
        _ => {
            skip("AZURE_SPECS_DIR is not set or not a folder", unchecked);
            None
        }
    }
}

//! The committed openapi.yaml and the server agree: the same routes and methods, every error
//! code listed, and the file served is the file committed.

use std::collections::BTreeSet;

use entrovid::api::ErrorCode;
use entrovid::http::{OPENAPI_YAML, ROUTES};

/// (method, path) pairs under `paths:`: two-space-indented `/path:` keys with four-space-indented
/// method keys, the layout openapi.yaml keeps.
fn spec_operations(spec: &str) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.trim_end() == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|rest| rest.strip_suffix(':')) {
            current = Some(format!("/{path}"));
        } else if let (Some(path), Some(method)) = (&current, line.strip_prefix("    ").and_then(|rest| rest.strip_suffix(':'))) {
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                operations.insert((method.to_string(), path.clone()));
            }
        }
    }
    operations
}

#[test]
fn routes_and_spec_agree() {
    let spec = spec_operations(OPENAPI_YAML);
    let server: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert!(spec.len() >= 15, "parsed {spec:?}");
    let only_spec: Vec<_> = spec.difference(&server).collect();
    let only_server: Vec<_> = server.difference(&spec).collect();
    assert!(only_spec.is_empty() && only_server.is_empty(), "only in spec: {only_spec:?}; only in server: {only_server:?}");
}

#[test]
fn every_error_code_is_documented() {
    let enum_line = OPENAPI_YAML
        .lines()
        .skip_while(|line| line.trim() != "ErrorCode:")
        .find(|line| line.trim_start().starts_with("enum:"))
        .expect("ErrorCode enum in openapi.yaml");
    for code in ErrorCode::ALL {
        assert!(enum_line.contains(code.as_str()), "{} missing from {enum_line}", code.as_str());
    }
    assert!(OPENAPI_YAML.starts_with("openapi: 3.1"));
}

//! Label selectors as the API takes them.

use std::collections::BTreeMap;

/// `k1=v1,k2=v2`: the objects that carry all of `labels`.
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_must_match() {
        let labels = BTreeMap::from([
            ("app".to_string(), "api".to_string()),
            ("kdev.dev/owner".to_string(), "alice".to_string()),
        ]);
        assert_eq!(label_selector(&labels), "app=api,kdev.dev/owner=alice");
        assert_eq!(label_selector(&BTreeMap::new()), "");
    }
}

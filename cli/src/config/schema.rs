//! kdev.yaml's JSON Schema (`kdev schema`), generated from the config types with schemars, so
//! it cannot drift from what kdev accepts; the fields kdev parses itself (workload references,
//! ports, durations) describe their accepted forms here.

use super::{DurationSpec, PortSpec, WorkloadRef};

/// A JSON Schema for a string with a pattern and a description (the custom-parsed fields).
fn string_schema(description: &str, pattern: Option<&str>) -> schemars::Schema {
    let mut schema = schemars::json_schema!({
        "type": "string",
        "description": description,
    });
    if let Some(p) = pattern {
        schema.insert("pattern".into(), p.into());
    }
    schema
}

impl schemars::JsonSchema for WorkloadRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkloadRef".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_schema(
            "`deployment/NAME`, `statefulset/NAME` or a bare Deployment name",
            Some(
                "^((deployment|deployments|deploy|statefulset|statefulsets|sts)/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
            ),
        )
    }
}

impl schemars::JsonSchema for PortSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a port (`8080`, the same locally) or `\"LOCAL:POD\"` (`\"9000:8080\"`)",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^[0-9]{1,5}(:[0-9]{1,5})?$"}
            ]
        })
    }
}

impl schemars::JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a duration: `500ms`, `5s`, `1m`, `1h`, or a number of seconds",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)?$"}
            ]
        })
    }
}

/// The JSON Schema of kdev.yaml, generated from these types.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(super::Config);
    schema.insert(
        "$id".into(),
        "https://kdev.dev/schema/kdev.yaml.json".into(),
    );
    schema.insert("title".into(), "kdev.yaml".into());
    schema.to_value()
}

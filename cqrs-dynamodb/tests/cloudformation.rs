//! The CloudFormation template of the production tables
//! (`docs/dynamodb/tables.json`) against the tables the code creates
//! ([`TableNames::specs`], which `ensure_tables` follows): same names, keys,
//! billing, stream and time to live, and no table more or less.

use std::collections::BTreeSet;

use cqrs_dynamodb::{TableNames, TableRole, TableSpec, TTL_ATTRIBUTE};
use serde_json::{json, Value};

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dynamodb/tables.json");

/// Template parameters and the values the comparison gives them.
const PARAMETERS: [(&str, &str); 3] = [("Env", "ENV"), ("AppName", "APP"), ("ModuleName", "MODULE")];

/// Table properties that change nothing the code relies on (backups,
/// encryption, protection, tags). Any other property is drift: the code does
/// not create it, so development tables would differ from production ones.
const OPERATIONAL_PROPERTIES: [&str; 5] = [
    "PointInTimeRecoverySpecification",
    "SSESpecification",
    "DeletionProtectionEnabled",
    "Tags",
    "ContributorInsightsSpecification",
];

fn template() -> Value {
    let text = std::fs::read_to_string(TEMPLATE).unwrap_or_else(|e| panic!("reading {TEMPLATE}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{TEMPLATE} is not JSON: {e}"))
}

fn specs() -> [TableSpec; 4] {
    TableNames::new("ENV", "APP", "MODULE").specs()
}

/// A `TableName` with the parameters substituted: a plain string, or a
/// `Fn::Sub` of the parameters.
fn table_name(properties: &Value) -> Result<String, String> {
    let name = match properties.get("TableName") {
        Some(Value::String(name)) => name.clone(),
        Some(value) => match value.get("Fn::Sub") {
            Some(Value::String(pattern)) => pattern.clone(),
            _ => {
                return Err(format!(
                    "TableName is neither a string nor a Fn::Sub string: {value}"
                ))
            }
        },
        None => return Err("no TableName".into()),
    };
    let substituted = PARAMETERS.iter().fold(name, |name, (parameter, value)| {
        name.replace(&format!("${{{parameter}}}"), value)
    });
    if substituted.contains("${") {
        return Err(format!(
            "TableName '{substituted}' uses something other than {PARAMETERS:?}"
        ));
    }
    Ok(substituted)
}

/// `{name: value}` from a list of `{name_key: .., value_key: ..}` objects.
fn pairs(list: Option<&Value>, name_key: &str, value_key: &str) -> BTreeSet<(String, String)> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|entry| {
            let field = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or("?").to_owned();
            (field(name_key), field(value_key))
        })
        .collect()
}

fn set(entries: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    entries
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Every difference between one table resource and its spec.
fn compare(resource: &str, properties: &Value, spec: &TableSpec, drift: &mut Vec<String>) {
    let mut differs = |what: String| {
        drift.push(format!(
            "{resource} ({:?} table {}): {what}",
            spec.role, spec.name
        ))
    };

    let keys = pairs(properties.get("KeySchema"), "AttributeName", "KeyType");
    if keys != set(&[("pk", "HASH"), ("sk", "RANGE")]) {
        differs(format!(
            "KeySchema is {keys:?}, the code uses pk HASH and sk RANGE"
        ));
    }
    let attributes = pairs(
        properties.get("AttributeDefinitions"),
        "AttributeName",
        "AttributeType",
    );
    if attributes != set(&[("pk", "S"), ("sk", "S")]) {
        differs(format!(
            "AttributeDefinitions are {attributes:?}, the code defines pk S and sk S"
        ));
    }
    let billing = properties.get("BillingMode").and_then(Value::as_str);
    if billing != Some("PAY_PER_REQUEST") {
        differs(format!(
            "BillingMode is {billing:?}, the code bills PAY_PER_REQUEST"
        ));
    }

    let stream = properties.get("StreamSpecification");
    let view = stream
        .and_then(|s| s.get("StreamViewType"))
        .and_then(Value::as_str);
    match (spec.stream, stream) {
        (true, _) if view != Some("NEW_AND_OLD_IMAGES") => differs(format!(
            "stream view type is {view:?}, the code creates NEW_AND_OLD_IMAGES"
        )),
        (false, Some(stream)) => differs(format!("has a stream ({stream}), the code creates none")),
        _ => {}
    }

    let ttl = properties.get("TimeToLiveSpecification");
    let enabled = ttl.and_then(|t| t.get("Enabled")).and_then(Value::as_bool) == Some(true);
    let attribute = ttl.and_then(|t| t.get("AttributeName")).and_then(Value::as_str);
    match (spec.ttl, enabled) {
        (true, false) => differs(format!(
            "time to live is not enabled, the code enables it on '{TTL_ATTRIBUTE}'"
        )),
        (true, true) if attribute != Some(TTL_ATTRIBUTE) => differs(format!(
            "time to live is on {attribute:?}, the code uses '{TTL_ATTRIBUTE}'"
        )),
        (false, true) => differs(format!(
            "time to live is enabled on {attribute:?}, the code enables none"
        )),
        _ => {}
    }

    let known = [
        "TableName",
        "KeySchema",
        "AttributeDefinitions",
        "BillingMode",
        "StreamSpecification",
        "TimeToLiveSpecification",
    ];
    for property in properties.as_object().into_iter().flat_map(|p| p.keys()) {
        if !known.contains(&property.as_str()) && !OPERATIONAL_PROPERTIES.contains(&property.as_str()) {
            differs(format!("has {property}, which the code does not create"));
        }
    }
}

/// Every difference between the template and the code, as readable lines.
fn drift(template: &Value) -> Vec<String> {
    let mut drift = Vec::new();
    let parameters = template.get("Parameters").and_then(Value::as_object);
    for (parameter, _) in PARAMETERS {
        if !parameters.is_some_and(|p| p.contains_key(parameter)) {
            drift.push(format!("parameter {parameter} is missing"));
        }
    }

    let tables: Vec<(&String, &Value)> = template
        .get("Resources")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, resource)| resource.get("Type").and_then(Value::as_str) == Some("AWS::DynamoDB::Table"))
        .collect();
    let mut named = Vec::new();
    for (resource, definition) in &tables {
        let properties = definition.get("Properties").unwrap_or(&Value::Null);
        match table_name(properties) {
            Ok(name) => named.push((resource.as_str(), name, properties)),
            Err(why) => drift.push(format!("{resource}: {why}")),
        }
    }

    let specs = specs();
    let mut command_resource = None;
    for spec in &specs {
        let matching: Vec<_> = named.iter().filter(|(_, name, _)| *name == spec.name).collect();
        match matching.as_slice() {
            [] => drift.push(format!(
                "no table named {} ({:?} table) in the template",
                spec.name, spec.role
            )),
            [(resource, _, properties)] => {
                compare(resource, properties, spec, &mut drift);
                if spec.role == TableRole::Command {
                    command_resource = Some(*resource);
                }
            }
            several => drift.push(format!(
                "{} tables are named {}: {:?}",
                several.len(),
                spec.name,
                several.iter().map(|(r, _, _)| r).collect::<Vec<_>>()
            )),
        }
    }
    for (resource, name, _) in &named {
        if !specs.iter().any(|spec| spec.name == *name) {
            drift.push(format!("{resource} (table {name}) is not a table of the code"));
        }
    }

    // Outputs: every table's name, and the command stream for the Lambda's
    // event source mapping.
    let outputs: Vec<&Value> = template
        .get("Outputs")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|output| output.get("Value"))
        .collect();
    for (resource, _, _) in &named {
        if !outputs.contains(&&json!({ "Ref": resource })) {
            drift.push(format!("no output gives the name of {resource}"));
        }
    }
    if let Some(command) = command_resource {
        if !outputs.contains(&&json!({ "Fn::GetAtt": [command, "StreamArn"] })) {
            drift.push(format!("no output gives the stream ARN of {command}"));
        }
    }
    drift
}

#[test]
fn template_matches_the_tables_of_the_code() {
    let drift = drift(&template());
    assert!(
        drift.is_empty(),
        "{TEMPLATE} has drifted from TableNames::specs() (update one or the other):\n  - {}",
        drift.join("\n  - ")
    );
}

/// A change to the template, and a text its drift report must contain.
type Mutation<'a> = (&'static str, Box<dyn Fn(&mut Value) + 'a>);

/// The comparison itself finds drift, in both directions.
#[test]
fn drift_is_detected() {
    let original = template();
    let tables = |template: &Value| {
        template["Resources"]
            .as_object()
            .expect("resources")
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::DynamoDB::Table")
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    let resource_of = |template: &Value, suffix: &str| {
        tables(template)
            .into_iter()
            .find(|r| table_name(&template["Resources"][r]["Properties"]).is_ok_and(|n| n.ends_with(suffix)))
            .unwrap_or_else(|| panic!("a table named *{suffix}"))
    };
    let command = resource_of(&original, "-command");
    let data = resource_of(&original, "-data");
    let sequences = resource_of(&original, "-sequences");

    let mutations: Vec<Mutation> = vec![
        (
            "stream",
            Box::new(|t| {
                t["Resources"][&command]["Properties"]
                    .as_object_mut()
                    .expect("properties")
                    .remove("StreamSpecification");
            }),
        ),
        (
            "stream",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]["StreamSpecification"] =
                    json!({ "StreamViewType": "NEW_AND_OLD_IMAGES" });
            }),
        ),
        (
            "NEW_AND_OLD_IMAGES",
            Box::new(|t| {
                t["Resources"][&command]["Properties"]["StreamSpecification"] =
                    json!({ "StreamViewType": "KEYS_ONLY" });
            }),
        ),
        (
            "time to live",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]
                    .as_object_mut()
                    .expect("properties")
                    .remove("TimeToLiveSpecification");
            }),
        ),
        (
            // Idempotency keys expire by their ttl.
            "time to live",
            Box::new(|t| {
                t["Resources"][&sequences]["Properties"]
                    .as_object_mut()
                    .expect("properties")
                    .remove("TimeToLiveSpecification");
            }),
        ),
        (
            "time to live",
            Box::new(|t| {
                t["Resources"][&command]["Properties"]["TimeToLiveSpecification"]["AttributeName"] =
                    json!("expiresAt");
            }),
        ),
        (
            "BillingMode",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]["BillingMode"] = json!("PROVISIONED");
            }),
        ),
        (
            "KeySchema",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]["KeySchema"][1]["KeyType"] = json!("HASH");
            }),
        ),
        (
            "AttributeDefinitions",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]["AttributeDefinitions"][1]["AttributeType"] = json!("N");
            }),
        ),
        (
            "no table named ENV-APP-MODULE-data",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]["TableName"] =
                    json!({ "Fn::Sub": "${Env}-${AppName}-${ModuleName}-history" });
            }),
        ),
        (
            "not a table of the code",
            Box::new(|t| {
                let mut extra = t["Resources"][&data].clone();
                extra["Properties"]["TableName"] = json!({ "Fn::Sub": "${Env}-${AppName}-extra" });
                t["Resources"]["ExtraTable"] = extra;
            }),
        ),
        (
            "no table named ENV-APP-sequences",
            Box::new(|t| {
                t["Resources"]
                    .as_object_mut()
                    .expect("resources")
                    .remove(&sequences);
            }),
        ),
        (
            "GlobalSecondaryIndexes",
            Box::new(|t| {
                t["Resources"][&data]["Properties"]["GlobalSecondaryIndexes"] = json!([]);
            }),
        ),
        (
            "stream ARN",
            Box::new(|t| {
                t["Outputs"]
                    .as_object_mut()
                    .expect("outputs")
                    .retain(|_, o| o["Value"].get("Fn::GetAtt").is_none());
            }),
        ),
        (
            "parameter ModuleName",
            Box::new(|t| {
                t["Parameters"]
                    .as_object_mut()
                    .expect("parameters")
                    .remove("ModuleName");
            }),
        ),
    ];
    for (expected, mutate) in mutations {
        let mut mutated = original.clone();
        mutate(&mut mutated);
        let drift = drift(&mutated);
        assert!(
            drift.iter().any(|line| line.contains(expected)),
            "a mutation about '{expected}' went unnoticed; drift found: {drift:?}"
        );
    }
}

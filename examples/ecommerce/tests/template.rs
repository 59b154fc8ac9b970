//! The CloudFormation template of the whole example
//! (`docs/dynamodb/ecommerce.json`) and its guide (`docs/deploy.md`) against
//! the code:
//!
//! - the tables are those of `TableNames::with_prefix(..).specs()` for the
//!   template's prefix, which is the example's default `--table-prefix`;
//! - the event source mapping reads the command table's stream with partial
//!   batch responses, bisect on error, bounded retries and record age, an SQS
//!   on-failure destination, and a filter (if any) that lets through exactly
//!   the records the code settles (`SETTLED_STATUSES`);
//! - each function's command line (`ECOMMERCE_ARGS`, run by the guide's
//!   `bootstrap` script) names a subcommand, flags and values that the
//!   example's CLI (`src/main.rs`) has; the API listens where the Lambda Web
//!   Adapter sends requests; the variables set are those the code reads;
//! - the server answers before API Gateway gives up and before Lambda's
//!   timeout; the stream function's timeout covers the recovery grace it may
//!   sleep for and a command's handler budget;
//! - the roles grant what the code calls, and nothing on `*`;
//! - the guide's replay event settles a command through
//!   `cqrs_dynamodb::lambda::handle_event`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use cqrs_core::testing::RecordingHandler;
use cqrs_core::{
    AsyncDispatch, CommandInput, CommandService, CommandStatus, DataService, EntityKey, Interest,
    InvocationContext, RetryPolicy,
};
use cqrs_dynamodb::lambda::{APP_VAR, ENV_VAR, MODULE_VAR, TABLE_PREFIX_VAR};
use cqrs_dynamodb::stream::SETTLED_STATUSES;
use cqrs_dynamodb::{index_attributes, TableNames, TableSpec, TTL_ATTRIBUTE};
use serde_json::{json, Value};

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dynamodb/ecommerce.json");
const GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy.md");
const MAIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/main.rs");

/// The variable the guide's `bootstrap` script passes to the executable as
/// its arguments.
const ARGS_VAR: &str = "ECOMMERCE_ARGS";
/// The template parameter naming the tables' prefix.
const PREFIX_PARAMETER: &str = "TablePrefix";
/// Lambda's longest function timeout.
const MAX_FUNCTION_TIMEOUT: u64 = 900;
/// API Gateway's longest integration timeout (HTTP APIs): the server must
/// answer before it.
const API_GATEWAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Table actions the engine sends on behalf of both functions (the
/// DynamoDB backend: reads, queries, conditional puts and updates, the items
/// of `TransactWriteItems`, `BatchGetItem` to find an entity's latest
/// command) and `ensure_tables` at start-up.
const TABLE_ACTIONS: [&str; 8] = [
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
];
/// What the stream function needs more: removing failure records, reading
/// the stream, and the on-failure destination (sent with its role).
const STREAM_TABLE_ACTIONS: [&str; 1] = ["dynamodb:DeleteItem"];
const STREAM_READ_ACTIONS: [&str; 4] = [
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn template() -> Value {
    serde_json::from_str(&read(TEMPLATE)).unwrap_or_else(|e| panic!("{TEMPLATE} is not JSON: {e}"))
}

// ---- the example's command line, read from src/main.rs --------------------

/// The clap derive of `src/main.rs`, as text: the `Cli` struct's flags and
/// the enums they (and the subcommand) take.
#[derive(Debug)]
struct CliModel {
    /// `--flag` → (Rust type without `Option<>`, `default_value` if any).
    flags: BTreeMap<String, (String, Option<String>)>,
    /// Enum name → its values in kebab case (clap's default).
    enums: BTreeMap<String, BTreeSet<String>>,
    /// The subcommand enum.
    subcommands: String,
}

/// `main.rs` without comments, with string literals kept (their braces do
/// not count as code).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut in_string = false;
            let mut escaped = false;
            let bytes: Vec<char> = line.chars().collect();
            for i in 0..bytes.len() {
                let c = bytes[i];
                if in_string {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => in_string = false,
                        _ => {}
                    }
                } else if c == '"' {
                    in_string = true;
                } else if c == '/' && bytes.get(i + 1) == Some(&'/') {
                    return bytes[..i].iter().collect::<String>();
                }
            }
            line.to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The body (between the braces) of the item whose header is `header`.
fn body<'a>(code: &'a str, header: &str) -> &'a str {
    let start = code
        .find(header)
        .unwrap_or_else(|| panic!("`{header}` not found in {MAIN}"));
    let open = start + code[start..].find('{').expect("an opening brace");
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in code[open..].char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &code[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("`{header}` has no closing brace")
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn without_option(ty: &str) -> &str {
    ty.strip_prefix("Option<")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(ty)
}

/// Variants of `enum {name}`, in kebab case.
fn variants(code: &str, name: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut depth = 0i32;
    for line in body(code, &format!("enum {name} ")).lines() {
        let line = line.trim();
        if depth == 0 && !line.starts_with("#[") {
            let ident: String = line.chars().take_while(char::is_ascii_alphanumeric).collect();
            if ident.starts_with(|c: char| c.is_ascii_uppercase()) {
                found.insert(kebab(&ident));
            }
        }
        depth += line.matches(['{', '(']).count() as i32 - line.matches(['}', ')']).count() as i32;
    }
    assert!(!found.is_empty(), "enum {name} has no variants in {MAIN}");
    found
}

fn cli_model() -> CliModel {
    let code = strip_comments(&read(MAIN));
    let mut flags = BTreeMap::new();
    let mut subcommands = None;
    let mut attributes = String::new();
    for line in body(&code, "struct Cli ").lines() {
        let line = line.trim();
        if line.starts_with("#[") || !attributes.is_empty() && !attributes.ends_with(']') {
            attributes.push_str(line);
            continue;
        }
        let Some((name, ty)) = line.trim_end_matches(',').split_once(':') else {
            continue;
        };
        let name = name.trim().trim_start_matches("pub ").trim();
        let ty = without_option(ty.trim()).to_owned();
        if attributes.contains("subcommand") {
            subcommands = Some(ty);
        } else {
            let default = attributes
                .split_once("default_value = \"")
                .map(|(_, rest)| rest.split('"').next().unwrap_or_default().to_owned());
            flags.insert(format!("--{}", name.replace('_', "-")), (ty, default));
        }
        attributes.clear();
    }
    let subcommands = subcommands.expect("a #[command(subcommand)] field in Cli");
    let mut enums = BTreeMap::new();
    let types: BTreeSet<&String> = flags.values().map(|(ty, _)| ty).chain([&subcommands]).collect();
    for ty in types {
        if code.contains(&format!("enum {ty} ")) {
            enums.insert(ty.clone(), variants(&code, ty));
        }
    }
    CliModel {
        flags,
        enums,
        subcommands,
    }
}

/// One function's command line, as the CLI would take it.
#[derive(Debug, Default)]
struct CommandLine {
    subcommand: String,
    /// `--flag` → its value (`None` for a switch).
    flags: BTreeMap<String, Option<String>>,
}

impl CommandLine {
    fn value(&self, flag: &str) -> Option<&str> {
        self.flags.get(flag).and_then(|v| v.as_deref())
    }

    /// A flag's value in seconds, or `default` (the constant the CLI takes
    /// its default from) when the flag is not given.
    fn seconds(&self, flag: &str, default: Duration) -> Duration {
        match self.value(flag) {
            Some(text) => {
                Duration::from_secs_f64(text.parse().unwrap_or_else(|e| panic!("{flag} {text}: {e}")))
            }
            None => default,
        }
    }
}

/// Parses `args` against the CLI; every problem is pushed to `drift`.
fn parse_args(who: &str, args: &str, cli: &CliModel, drift: &mut Vec<String>) -> CommandLine {
    let mut words = args.split_whitespace().peekable();
    let mut line = CommandLine::default();
    match words.next() {
        Some(sub) if cli.enums[&cli.subcommands].contains(sub) => line.subcommand = sub.to_owned(),
        other => drift.push(format!(
            "{who}: {ARGS_VAR} starts with {other:?}, not a subcommand of the example ({:?})",
            cli.enums[&cli.subcommands]
        )),
    }
    while let Some(word) = words.next() {
        let Some((ty, _)) = cli.flags.get(word) else {
            drift.push(format!(
                "{who}: {ARGS_VAR} has {word}, which the example's CLI does not take"
            ));
            continue;
        };
        if ty == "bool" {
            line.flags.insert(word.to_owned(), None);
            continue;
        }
        let Some(value) = words.next() else {
            drift.push(format!("{who}: {word} has no value"));
            continue;
        };
        let valid = match ty.as_str() {
            "SocketAddr" => value.parse::<SocketAddr>().is_ok(),
            "f64" => value.parse::<f64>().is_ok_and(|v| v >= 0.0),
            "String" => true,
            other => match cli.enums.get(other) {
                Some(values) => values.contains(value),
                None => true,
            },
        };
        if !valid {
            drift.push(format!(
                "{who}: {word} {value} is not a valid {ty}{}",
                cli.enums
                    .get(ty)
                    .map(|v| format!(" (one of {v:?})"))
                    .unwrap_or_default()
            ));
        }
        line.flags.insert(word.to_owned(), Some(value.to_owned()));
    }
    line
}

// ---- the template ----------------------------------------------------------

/// A template value as a string: a literal, a `Ref` to a parameter (its
/// default, else `<Name>`), or a `Fn::Sub` of parameters (other variables
/// are kept as written).
fn resolve(template: &Value, value: &Value) -> Result<String, String> {
    let parameter = |name: &str| {
        template["Parameters"].get(name).map(|p| match p.get("Default") {
            Some(Value::String(d)) => d.clone(),
            Some(d) => d.to_string(),
            None => format!("<{name}>"),
        })
    };
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => {
            if let Some(Value::String(name)) = value.get("Ref") {
                return parameter(name).ok_or_else(|| format!("Ref {name} is not a parameter"));
            }
            if let Some(Value::String(pattern)) = value.get("Fn::Sub") {
                let mut out = String::new();
                let mut rest = pattern.as_str();
                while let Some(start) = rest.find("${") {
                    out.push_str(&rest[..start]);
                    let end = rest[start..].find('}').ok_or("unclosed ${ in Fn::Sub")? + start;
                    let name = &rest[start + 2..end];
                    out.push_str(&parameter(name).unwrap_or_else(|| format!("${{{name}}}")));
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                return Ok(out);
            }
            Err(format!("{value} is neither a string, a Ref nor a Fn::Sub string"))
        }
    }
}

fn resources<'a>(template: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    template["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(name, r)| (name.as_str(), &r["Properties"]))
        .collect()
}

fn get_att(resource: &str, attribute: &str) -> Value {
    json!({ "Fn::GetAtt": [resource, attribute] })
}

fn pairs(list: &Value, name_key: &str, value_key: &str) -> BTreeSet<(String, String)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or("?").to_owned();
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

/// The table resources against `specs`; returns the resource of each role.
fn check_tables(template: &Value, drift: &mut Vec<String>) -> BTreeMap<String, String> {
    let prefix = resolve(template, &json!({ "Ref": PREFIX_PARAMETER }));
    let Ok(prefix) = prefix else {
        drift.push(format!("no parameter {PREFIX_PARAMETER}"));
        return BTreeMap::new();
    };
    let specs: [TableSpec; 4] = ecommerce::shop::dynamodb_tables(TableNames::with_prefix(&prefix)).specs();
    let tables = resources(template, "AWS::DynamoDB::Table");
    let mut by_role = BTreeMap::new();
    for spec in &specs {
        let matching: Vec<_> = tables
            .iter()
            .filter(|(_, p)| resolve(template, &p["TableName"]).ok().as_deref() == Some(spec.name.as_str()))
            .collect();
        let [(resource, properties)] = matching.as_slice() else {
            drift.push(format!(
                "{} tables named {} ({:?} table) in the template, not one",
                matching.len(),
                spec.name,
                spec.role
            ));
            continue;
        };
        by_role.insert(format!("{:?}", spec.role), (*resource).to_owned());
        let mut differs = |what: String| drift.push(format!("{resource} ({}): {what}", spec.name));
        if pairs(&properties["KeySchema"], "AttributeName", "KeyType")
            != set(&[("pk", "HASH"), ("sk", "RANGE")])
        {
            differs("KeySchema is not pk HASH, sk RANGE".into());
        }
        let index_keys: Vec<(String, String)> = spec.indexes.iter().map(|i| index_attributes(i)).collect();
        let mut attributes = set(&[("pk", "S"), ("sk", "S")]);
        for (hash, range) in &index_keys {
            attributes.insert((hash.clone(), "S".to_owned()));
            attributes.insert((range.clone(), "S".to_owned()));
        }
        if pairs(
            &properties["AttributeDefinitions"],
            "AttributeName",
            "AttributeType",
        ) != attributes
        {
            differs(format!("AttributeDefinitions are not {attributes:?}"));
        }
        let declared: BTreeMap<String, &Value> = properties["GlobalSecondaryIndexes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|gsi| Some((gsi["IndexName"].as_str()?.to_owned(), gsi)))
            .collect();
        if declared.keys().collect::<BTreeSet<_>>() != spec.indexes.iter().collect::<BTreeSet<_>>() {
            differs(format!(
                "global secondary indexes {:?}, the code reads {:?}",
                declared.keys(),
                spec.indexes
            ));
        }
        for (name, (hash, range)) in spec.indexes.iter().zip(&index_keys) {
            let Some(gsi) = declared.get(name) else { continue };
            let keys = pairs(&gsi["KeySchema"], "AttributeName", "KeyType");
            if keys != set(&[(hash.as_str(), "HASH"), (range.as_str(), "RANGE")])
                || gsi["Projection"]["ProjectionType"] != "ALL"
            {
                differs(format!(
                    "index {name} is not keyed on {hash} HASH, {range} RANGE, projecting ALL"
                ));
            }
        }
        if properties["BillingMode"] != "PAY_PER_REQUEST" {
            differs("BillingMode is not PAY_PER_REQUEST".into());
        }
        let view = properties["StreamSpecification"]["StreamViewType"].as_str();
        match (spec.stream, view) {
            (true, Some("NEW_AND_OLD_IMAGES")) | (false, None) => {}
            (true, other) => differs(format!(
                "stream view type is {other:?}, the code creates NEW_AND_OLD_IMAGES"
            )),
            (false, Some(other)) => differs(format!("has a stream ({other}), the code creates none")),
        }
        let ttl = &properties["TimeToLiveSpecification"];
        let enabled = ttl["Enabled"] == true;
        match (spec.ttl, enabled, ttl["AttributeName"].as_str()) {
            (true, true, Some(a)) if a == TTL_ATTRIBUTE => {}
            (false, false, _) => {}
            (true, ..) => differs(format!("time to live is not enabled on '{TTL_ATTRIBUTE}'")),
            (false, true, a) => differs(format!("time to live is enabled on {a:?}, the code enables none")),
        }
    }
    for (resource, properties) in &tables {
        let name = resolve(template, &properties["TableName"]).unwrap_or_default();
        if !specs.iter().any(|s| s.name == name) {
            drift.push(format!("{resource} (table {name}) is not a table of the code"));
        }
    }
    by_role
}

/// One Lambda function of the template.
struct Function<'a> {
    resource: &'a str,
    properties: &'a Value,
    env: BTreeMap<String, String>,
    line: CommandLine,
}

fn functions<'a>(template: &'a Value, cli: &CliModel, drift: &mut Vec<String>) -> Vec<Function<'a>> {
    let mut found = Vec::new();
    for (resource, properties) in resources(template, "AWS::Lambda::Function") {
        if properties["Runtime"] != "provided.al2023" || properties["Handler"] != "bootstrap" {
            drift.push(format!(
                "{resource}: runtime {} and handler {}, not provided.al2023 and bootstrap",
                properties["Runtime"], properties["Handler"]
            ));
        }
        let mut env = BTreeMap::new();
        for (name, value) in properties["Environment"]["Variables"]
            .as_object()
            .into_iter()
            .flatten()
        {
            match resolve(template, value) {
                Ok(value) => {
                    env.insert(name.clone(), value);
                }
                Err(why) => drift.push(format!("{resource}: {name}: {why}")),
            }
        }
        let Some(args) = env.get(ARGS_VAR) else {
            drift.push(format!(
                "{resource}: no {ARGS_VAR}: the bootstrap script would start nothing"
            ));
            continue;
        };
        let line = parse_args(resource, args, cli, drift);
        for name in env.keys().filter(|n| n.starts_with("CQRS_")) {
            if ![TABLE_PREFIX_VAR, ENV_VAR, APP_VAR, MODULE_VAR].contains(&name.as_str()) {
                drift.push(format!(
                    "{resource}: {name} is not a variable cqrs_dynamodb::lambda reads"
                ));
            }
        }
        found.push(Function {
            resource,
            properties,
            env,
            line,
        });
    }
    found
}

fn the_function<'a, 'b>(
    functions: &'b [Function<'a>],
    subcommand: &str,
    drift: &mut Vec<String>,
) -> Option<&'b Function<'a>> {
    let matching: Vec<_> = functions
        .iter()
        .filter(|f| f.line.subcommand == subcommand)
        .collect();
    match matching.as_slice() {
        [one] => Some(one),
        other => {
            drift.push(format!(
                "{} functions run `ecommerce {subcommand}`, not one",
                other.len()
            ));
            None
        }
    }
}

/// Longest time a sync publish spends on the handlers of one command: every
/// attempt timed out, and the backoff between them.
fn handler_budget(line: &CommandLine) -> Duration {
    let retry = RetryPolicy::default();
    let timeout = line.seconds("--handler-timeout", ecommerce::shop::HANDLER_TIMEOUT);
    let backoff: Duration = (1..retry.max_attempts).map(|a| retry.backoff(a)).sum();
    timeout * retry.max_attempts + backoff
}

fn timeout_of(function: &Function) -> Duration {
    Duration::from_secs(function.properties["Timeout"].as_u64().unwrap_or(3))
}

/// Every (action, resource) the role of `function` allows.
fn grants(template: &Value, function: &Function, drift: &mut Vec<String>) -> BTreeSet<(String, String)> {
    let mut allowed = BTreeSet::new();
    let role = function.properties["Role"]["Fn::GetAtt"][0]
        .as_str()
        .unwrap_or_default();
    let Some(role_properties) = resources(template, "AWS::IAM::Role")
        .into_iter()
        .find(|(name, _)| *name == role)
        .map(|(_, p)| p)
    else {
        drift.push(format!(
            "{}: its Role is not a role of the template",
            function.resource
        ));
        return allowed;
    };
    let as_list = |v: &Value| match v {
        Value::Array(list) => list.clone(),
        other => vec![other.clone()],
    };
    for policy in role_properties["Policies"].as_array().into_iter().flatten() {
        for statement in policy["PolicyDocument"]["Statement"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if statement["Effect"] != "Allow" {
                continue;
            }
            for action in as_list(&statement["Action"]) {
                let action = action.as_str().unwrap_or_default().to_owned();
                if action == "*" || action.ends_with(":*") {
                    drift.push(format!("{role}: allows {action}"));
                }
                for resource in as_list(&statement["Resource"]) {
                    if resource == "*" {
                        drift.push(format!("{role}: allows {action} on *"));
                    }
                    allowed.insert((action.clone(), resource.to_string()));
                }
            }
        }
    }
    if role_properties.get("ManagedPolicyArns").is_some() {
        drift.push(format!(
            "{role}: managed policies are not checked; grant inline what the code needs"
        ));
    }
    allowed
}

fn requires(
    allowed: &BTreeSet<(String, String)>,
    who: &str,
    actions: &[&str],
    resource: &Value,
    drift: &mut Vec<String>,
) {
    for action in actions {
        if !allowed.contains(&((*action).to_owned(), resource.to_string())) {
            drift.push(format!("{who}: its role does not allow {action} on {resource}"));
        }
    }
}

/// Every difference between the template (and its guide) and the code.
fn drift(template: &Value, guide: &str) -> Vec<String> {
    let mut drift = Vec::new();
    let cli = cli_model();
    let tables = check_tables(template, &mut drift);

    // The prefix is the example's default, so the stack and a plain run agree.
    let prefix = resolve(template, &json!({ "Ref": PREFIX_PARAMETER })).unwrap_or_default();
    let cli_prefix = cli.flags.get("--table-prefix").and_then(|(_, d)| d.clone());
    if cli_prefix.as_deref() != Some(prefix.as_str()) {
        drift.push(format!(
            "{PREFIX_PARAMETER} defaults to {prefix:?}, the example's --table-prefix to {cli_prefix:?}"
        ));
    }

    let functions = functions(template, &cli, &mut drift);
    for function in &functions {
        let who = function.resource;
        if function.line.value("--backend") != Some("dynamodb") || !function.line.flags.contains_key("--aws")
        {
            drift.push(format!("{who}: does not run with --backend dynamodb --aws"));
        }
        match function.line.value("--table-prefix") {
            Some(p) if p == prefix => {}
            other => drift.push(format!(
                "{who}: --table-prefix is {other:?}, the tables' prefix is {prefix:?}"
            )),
        }
        if let Some(p) = function.env.get(TABLE_PREFIX_VAR).filter(|p| **p != prefix) {
            drift.push(format!(
                "{who}: {TABLE_PREFIX_VAR} is {p:?}, the tables' prefix is {prefix:?}"
            ));
        }
        if timeout_of(function) > Duration::from_secs(MAX_FUNCTION_TIMEOUT) {
            drift.push(format!("{who}: Timeout above Lambda's {MAX_FUNCTION_TIMEOUT} s"));
        }
    }

    // The API: the server behind the web adapter, publishing only.
    if let Some(api) = the_function(&functions, "serve", &mut drift) {
        let who = api.resource;
        if api.line.value("--pipeline") != Some("external") {
            drift.push(format!(
                "{who}: --pipeline is {:?}; the API function must only publish (external): Lambda \
                 freezes a process between requests, so nothing may run in it afterwards",
                api.line.value("--pipeline")
            ));
        }
        let port = api
            .env
            .get("AWS_LWA_PORT")
            .cloned()
            .unwrap_or_else(|| "8080".into());
        let listens = api
            .line
            .value("--addr")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if listens.map(|a| a.port().to_string()) != Some(port.clone()) {
            drift.push(format!(
                "{who}: --addr {listens:?} is not the web adapter's port {port}"
            ));
        }
        let layers = api.properties["Layers"].as_array().cloned().unwrap_or_default();
        let layer_parameter = layers
            .iter()
            .filter_map(|l| l["Ref"].as_str())
            .any(|p| template["Parameters"].get(p).is_some());
        if !layer_parameter {
            drift.push(format!(
                "{who}: no layer given by a template parameter (the Lambda Web Adapter)"
            ));
        }
        let secret = ecommerce::auth::SECRET_ENV;
        let secret_parameter = api.properties["Environment"]["Variables"][secret]["Ref"]
            .as_str()
            .and_then(|p| template["Parameters"].get(p));
        if !secret_parameter.is_some_and(|p| p["NoEcho"] == true) {
            drift.push(format!("{who}: {secret} is not set from a NoEcho parameter"));
        }
        let request_timeout = api
            .line
            .seconds("--request-timeout", ecommerce::http::DEFAULT_REQUEST_TIMEOUT);
        if request_timeout >= API_GATEWAY_TIMEOUT {
            drift.push(format!(
                "{who}: --request-timeout {request_timeout:?} is not below API Gateway's {API_GATEWAY_TIMEOUT:?}"
            ));
        }
        // The server, not Lambda, must end every request: a function timeout
        // kills the environment in the middle of whatever it was doing.
        if timeout_of(api) <= request_timeout {
            drift.push(format!(
                "{who}: Timeout {:?} is not above the server's request timeout ({request_timeout:?})",
                timeout_of(api)
            ));
        }
        let fronted = resources(template, "AWS::ApiGatewayV2::Api")
            .into_iter()
            .find(|(_, p)| p["Target"] == get_att(who, "Arn"));
        match fronted {
            Some((http_api, _)) => {
                let outputs: Vec<&Value> = template["Outputs"]
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.values())
                    .map(|o| &o["Value"])
                    .collect();
                if !outputs.contains(&&get_att(http_api, "ApiEndpoint")) {
                    drift.push(format!("no output gives the URL of {http_api}"));
                }
                let permitted = resources(template, "AWS::Lambda::Permission")
                    .into_iter()
                    .any(|(_, p)| {
                        p["FunctionName"] == json!({ "Ref": who })
                            && p["Principal"] == "apigateway.amazonaws.com"
                    });
                if !permitted {
                    drift.push(format!(
                        "{http_api} may not invoke {who} (no AWS::Lambda::Permission)"
                    ));
                }
            }
            None => drift.push(format!("no HTTP API (AWS::ApiGatewayV2::Api) targets {who}")),
        }
        let allowed = grants(template, api, &mut drift);
        for table in tables.values() {
            requires(&allowed, who, &TABLE_ACTIONS, &get_att(table, "Arn"), &mut drift);
        }
    }

    // The stream function and its mapping.
    let queues: Vec<&str> = resources(template, "AWS::SQS::Queue")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if let Some(stream) = the_function(&functions, "lambda-stream", &mut drift) {
        let who = stream.resource;
        let grace = stream
            .line
            .seconds("--recovery-grace", cqrs_core::DEFAULT_RECOVERY_GRACE);
        let needed = grace + handler_budget(&stream.line);
        if timeout_of(stream) < needed {
            drift.push(format!(
                "{who}: Timeout {:?} is below the recovery grace Engine::settle may sleep for plus \
                 one command's handler budget ({needed:?})",
                timeout_of(stream)
            ));
        }
        let mappings = resources(template, "AWS::Lambda::EventSourceMapping");
        let command = tables.get("Command").cloned().unwrap_or_default();
        match mappings.as_slice() {
            [(mapping, m)] => check_mapping(mapping, m, who, &command, &queues, &mut drift),
            other => drift.push(format!("{} event source mappings, not one", other.len())),
        }
        let allowed = grants(template, stream, &mut drift);
        for table in tables.values() {
            requires(&allowed, who, &TABLE_ACTIONS, &get_att(table, "Arn"), &mut drift);
            requires(
                &allowed,
                who,
                &STREAM_TABLE_ACTIONS,
                &get_att(table, "Arn"),
                &mut drift,
            );
        }
        let streams = json!({ "Fn::Sub": format!("${{{command}.Arn}}/stream/*") });
        requires(&allowed, who, &STREAM_READ_ACTIONS, &streams, &mut drift);
        for queue in &queues {
            requires(
                &allowed,
                who,
                &["sqs:SendMessage"],
                &get_att(queue, "Arn"),
                &mut drift,
            );
        }
    }
    let outputs: Vec<&Value> = template["Outputs"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .map(|o| &o["Value"])
        .collect();
    for queue in &queues {
        if !outputs.contains(&&json!({ "Ref": queue })) {
            drift.push(format!("no output gives the URL of {queue}"));
        }
    }

    // The guide's bootstrap script runs what ECOMMERCE_ARGS says.
    match fenced_after(guide, "<!-- bootstrap -->") {
        Some(script)
            if script.contains("exec ")
                && script.contains("/ecommerce\"")
                && (script.contains(&format!("${ARGS_VAR}"))
                    || script.contains(&format!("${{{ARGS_VAR}}}"))) => {}
        other => drift.push(format!(
            "the bootstrap script of docs/deploy.md does not exec ecommerce with ${ARGS_VAR}: {other:?}"
        )),
    }
    drift
}

fn check_mapping(
    mapping: &str,
    m: &Value,
    function: &str,
    command: &str,
    queues: &[&str],
    drift: &mut Vec<String>,
) {
    let mut differs = |what: String| drift.push(format!("{mapping}: {what}"));
    if m["FunctionName"] != json!({ "Ref": function }) {
        differs(format!("does not invoke {function}"));
    }
    if m["EventSourceArn"] != get_att(command, "StreamArn") {
        differs(format!("does not read the stream of {command}"));
    }
    if m["StartingPosition"] != "TRIM_HORIZON" {
        differs(
            "StartingPosition is not TRIM_HORIZON: commands stored before the mapping would be missed".into(),
        );
    }
    let responses = m["FunctionResponseTypes"].as_array().cloned().unwrap_or_default();
    if !responses.contains(&json!("ReportBatchItemFailures")) {
        differs(
            "FunctionResponseTypes lacks ReportBatchItemFailures: a failed record would count as done".into(),
        );
    }
    if m["BisectBatchOnFunctionError"] != true {
        differs("BisectBatchOnFunctionError is not true".into());
    }
    match m["MaximumRetryAttempts"].as_i64() {
        Some(0..=10_000) => {}
        other => differs(format!(
            "MaximumRetryAttempts is {other:?}: unbounded retries hold the shard up"
        )),
    }
    match m["MaximumRecordAgeInSeconds"].as_i64() {
        Some(60..=86_399) => {}
        other => differs(format!(
            "MaximumRecordAgeInSeconds is {other:?}: not bounded below the stream's 24 h retention"
        )),
    }
    match m["BatchSize"].as_i64() {
        Some(1..=1000) => {}
        other => differs(format!("BatchSize is {other:?}, not a moderate 1..=1000")),
    }
    let destination = &m["DestinationConfig"]["OnFailure"]["Destination"];
    if !queues.iter().any(|q| *destination == get_att(q, "Arn")) {
        differs(format!(
            "the on-failure destination {destination} is not an SQS queue of the template"
        ));
    }
    for filter in m["FilterCriteria"]["Filters"].as_array().into_iter().flatten() {
        let pattern: Value = match filter["Pattern"].as_str().map(serde_json::from_str) {
            Some(Ok(pattern)) => pattern,
            _ => {
                differs(format!(
                    "filter pattern {} is not a JSON string",
                    filter["Pattern"]
                ));
                continue;
            }
        };
        if pattern["eventName"] != json!(["INSERT"]) {
            differs(format!(
                "the filter passes eventName {}, the code settles INSERTs only",
                pattern["eventName"]
            ));
        }
        let statuses: BTreeSet<&str> = pattern["dynamodb"]["NewImage"]["status"]["S"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let settled: BTreeSet<&str> = SETTLED_STATUSES.into_iter().collect();
        if statuses != settled {
            differs(format!(
                "the filter passes statuses {statuses:?}, the code settles {settled:?} (SETTLED_STATUSES)"
            ));
        }
    }
}

/// The first fenced code block after `marker` in `markdown`.
fn fenced_after(markdown: &str, marker: &str) -> Option<String> {
    let after = &markdown[markdown.find(marker)? + marker.len()..];
    let open = after.find("```")?;
    let start = open + after[open..].find('\n')? + 1;
    let end = start + after[start..].find("```")?;
    Some(
        after[start..end]
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn template_matches_the_code() {
    let drift = drift(&template(), &read(GUIDE));
    assert!(
        drift.is_empty(),
        "{TEMPLATE} (or docs/deploy.md) has drifted from the code (update one or the other):\n  - {}",
        drift.join("\n  - ")
    );
}

/// A change to the template, and a text its drift report must contain.
type Mutation = (&'static str, fn(&mut Value));

fn properties<'a>(template: &'a mut Value, resource: &str) -> &'a mut Value {
    assert!(
        template["Resources"].get(resource).is_some(),
        "no resource {resource}"
    );
    &mut template["Resources"][resource]["Properties"]
}

fn mapping(t: &mut Value) -> &mut Value {
    let name = resources(t, "AWS::Lambda::EventSourceMapping")[0].0.to_owned();
    properties(t, &name)
}

/// The statement of a role's inline policy.
fn statement<'a>(t: &'a mut Value, role: &str, policy: &str) -> &'a mut Value {
    let policies = properties(t, role)["Policies"].as_array_mut().expect("policies");
    let found = policies
        .iter_mut()
        .find(|p| p["PolicyName"] == policy)
        .unwrap_or_else(|| panic!("{role} has no policy {policy}"));
    &mut found["PolicyDocument"]["Statement"][0]
}

/// The function running `subcommand`.
fn function<'a>(t: &'a mut Value, subcommand: &str) -> &'a mut Value {
    let name = t["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .find(|(_, r)| {
            r["Properties"]["Environment"]["Variables"][ARGS_VAR]["Fn::Sub"]
                .as_str()
                .is_some_and(|a| a.starts_with(subcommand))
        })
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| panic!("a function running {subcommand}"));
    &mut t["Resources"][name]["Properties"]
}

fn args<'a>(t: &'a mut Value, subcommand: &str) -> &'a mut Value {
    &mut function(t, subcommand)["Environment"]["Variables"][ARGS_VAR]["Fn::Sub"]
}

fn replace_in(value: &mut Value, from: &str, to: &str) {
    let text = value.as_str().expect("a string").replace(from, to);
    *value = json!(text);
}

/// The comparison itself finds drift.
#[test]
fn drift_is_detected() {
    let original = template();
    let guide = read(GUIDE);
    let mutations: Vec<Mutation> = vec![
        ("ReportBatchItemFailures", |t| {
            mapping(t)["FunctionResponseTypes"] = json!([])
        }),
        ("BisectBatchOnFunctionError", |t| {
            mapping(t)["BisectBatchOnFunctionError"] = json!(false)
        }),
        ("MaximumRetryAttempts", |t| {
            mapping(t)["MaximumRetryAttempts"] = json!(-1)
        }),
        ("MaximumRecordAgeInSeconds", |t| {
            mapping(t)
                .as_object_mut()
                .expect("mapping")
                .remove("MaximumRecordAgeInSeconds");
        }),
        ("TRIM_HORIZON", |t| {
            mapping(t)["StartingPosition"] = json!("LATEST")
        }),
        ("on-failure destination", |t| {
            mapping(t)
                .as_object_mut()
                .expect("mapping")
                .remove("DestinationConfig");
        }),
        ("SETTLED_STATUSES", |t| {
            mapping(t)["FilterCriteria"]["Filters"][0]["Pattern"] =
                json!(r#"{"eventName":["INSERT"],"dynamodb":{"NewImage":{"status":{"S":["published"]}}}}"#)
        }),
        ("INSERTs only", |t| {
            mapping(t)["FilterCriteria"]["Filters"][0]["Pattern"] = json!(
                r#"{"eventName":["INSERT","MODIFY"],"dynamodb":{"NewImage":{"status":{"S":["published","applied"]}}}}"#
            )
        }),
        ("NEW_AND_OLD_IMAGES", |t| {
            properties(t, "CommandTable")["StreamSpecification"] = json!({ "StreamViewType": "KEYS_ONLY" })
        }),
        ("time to live", |t| {
            properties(t, "DataTable")
                .as_object_mut()
                .expect("table")
                .remove("TimeToLiveSpecification");
        }),
        ("not a table of the code", |t| {
            properties(t, "DataTable")["TableName"] = json!({ "Fn::Sub": "${TablePrefix}-extra" })
        }),
        ("--table-prefix", |t| {
            t["Parameters"][PREFIX_PARAMETER]["Default"] = json!("shop");
        }),
        ("not a subcommand", |t| {
            replace_in(args(t, "lambda-stream"), "lambda-stream", "lambda-consume")
        }),
        ("does not take", |t| {
            replace_in(args(t, "serve"), "--aws", "--aws --region eu-west-1")
        }),
        ("not a valid Pipeline", |t| {
            replace_in(args(t, "serve"), "external", "sqs")
        }),
        ("only publish", |t| {
            replace_in(args(t, "serve"), "external", "stream")
        }),
        ("web adapter's port", |t| {
            function(t, "serve")["Environment"]["Variables"]["AWS_LWA_PORT"] = json!("9000")
        }),
        ("API Gateway", |t| {
            replace_in(args(t, "serve"), "--request-timeout 25", "--request-timeout 60")
        }),
        ("request timeout", |t| function(t, "serve")["Timeout"] = json!(20)),
        ("recovery grace", |t| {
            function(t, "lambda-stream")["Timeout"] = json!(60)
        }),
        ("recovery grace", |t| {
            replace_in(args(t, "lambda-stream"), "--aws", "--aws --recovery-grace 1000")
        }),
        ("not a variable cqrs_dynamodb::lambda reads", |t| {
            function(t, "lambda-stream")["Environment"]["Variables"]["CQRS_PREFIX"] = json!("x")
        }),
        ("CQRS_TABLE_PREFIX", |t| {
            function(t, "lambda-stream")["Environment"]["Variables"][TABLE_PREFIX_VAR] = json!("other")
        }),
        ("NoEcho", |t| {
            t["Parameters"]["JwtSecret"]
                .as_object_mut()
                .expect("parameter")
                .remove("NoEcho");
        }),
        ("does not allow dynamodb:DeleteItem", |t| {
            let actions = &mut statement(t, "StreamRole", "tables")["Action"];
            actions
                .as_array_mut()
                .expect("actions")
                .retain(|a| a != "dynamodb:DeleteItem");
        }),
        ("does not allow dynamodb:GetRecords", |t| {
            statement(t, "StreamRole", "command-stream")["Resource"] =
                json!("arn:aws:dynamodb:*:*:table/other/stream/*")
        }),
        ("on *", |t| {
            statement(t, "ApiRole", "tables")["Resource"] = json!("*")
        }),
        ("sqs:SendMessage", |t| {
            properties(t, "StreamRole")["Policies"]
                .as_array_mut()
                .expect("policies")
                .retain(|p| p["PolicyName"] != "failure-queue");
        }),
        ("no output gives the URL", |t| {
            t["Outputs"].as_object_mut().expect("outputs").remove("ApiUrl");
        }),
    ];
    for (expected, mutate) in mutations {
        let mut mutated = original.clone();
        mutate(&mut mutated);
        let drift = drift(&mutated, &guide);
        assert!(
            drift.iter().any(|line| line.contains(expected)),
            "a mutation about '{expected}' went unnoticed; drift found: {drift:?}"
        );
    }
    let guide_without_args = guide.replace(&format!("${ARGS_VAR}"), "serve");
    let drift = drift(&original, &guide_without_args);
    assert!(drift.iter().any(|l| l.contains("bootstrap script")), "{drift:?}");
}

/// The replay event of docs/deploy.md, handed to the stream function's
/// entry point, settles the command it names.
#[tokio::test]
async fn the_guides_replay_event_settles_its_command() {
    let guide = read(GUIDE);
    let event = fenced_after(&guide, "<!-- replay-event -->").expect("a replay event in docs/deploy.md");
    let text: Value = serde_json::from_str(&event).expect("the replay event is JSON");
    let record = &text["Records"][0]["dynamodb"];
    let pk = record["Keys"]["pk"]["S"].as_str().expect("a pk");
    let (sk, version) = cqrs_core::parse_command_sk(record["Keys"]["sk"]["S"].as_str().expect("an sk"))
        .expect("a command sort key");
    assert_eq!(version, 1, "the example replays a version 1");

    let handler = RecordingHandler::new("replayed", Interest::All);
    let engine = cqrs_memory::InMemory::engine()
        .dispatch(AsyncDispatch::External)
        .handler_arc(handler.clone())
        .build();
    let tenant = cqrs_core::tenant_of_pk(pk).expect("a tenant pk");
    let ctx = InvocationContext::new(tenant, "user-1");
    engine
        .publish_async(CommandInput::new(pk, sk), &ctx)
        .await
        .expect("published");
    let key = EntityKey::new(pk, sk);
    assert_eq!(
        engine.get_item(&key, &ctx).await.unwrap(),
        None,
        "not applied before the replay"
    );

    let event = serde_json::from_str(&event).expect("the replay event is a DynamoDB stream event");
    let response = cqrs_dynamodb::lambda::handle_event(&engine, event)
        .await
        .expect("the batch is handled");
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        engine.get_item(&key, &ctx).await.unwrap().map(|i| i.version),
        Some(1)
    );
    let status = engine.get_command(&key, 1, &ctx).await.unwrap().map(|c| c.status);
    assert_eq!(status, Some(CommandStatus::Finished));
    assert_eq!(handler.seen(), [(sk.into(), 1)]);
}

#[test]
fn the_cli_model_reads_main_rs() {
    let cli = cli_model();
    assert!(cli.enums[&cli.subcommands].contains("serve"), "{cli:?}");
    assert!(cli.enums[&cli.subcommands].contains("lambda-stream"), "{cli:?}");
    assert_eq!(cli.flags["--aws"].0, "bool");
    assert_eq!(cli.flags["--table-prefix"].1.as_deref(), Some("ecommerce"));
    assert!(cli.enums.values().any(|v| v.contains("external")), "{cli:?}");
}

//! `ecommerce lag`: how far each read model is behind the data table and,
//! on DynamoDB, how far the pipeline is behind the command table's stream.

use ecommerce::read_models::ReadModel;
use ecommerce::Shop;
use serde_json::{json, Map, Value};

use super::output::{age, print_json};
use super::stream::{pipeline_json, print_pipeline_lag, StreamParts};

/// Prints both lags; `stream` is `None` on the memory backend (no stream).
pub async fn lag(
    shop: &Shop,
    tenants: &[String],
    stream: Option<StreamParts<'_>>,
    bound: usize,
    json: bool,
) -> Result<(), String> {
    if shop.read_models.is_none() && stream.is_none() {
        return Err(
            "lag needs the read models' database (give --read-db URL) or --backend dynamodb".to_owned(),
        );
    }
    let mut projections = Map::new();
    if let Some(read_models) = &shop.read_models {
        for (which, name) in [(ReadModel::Sales, "sales"), (ReadModel::Search, "search")] {
            let lag = read_models
                .lag(which, tenants)
                .await
                .map_err(|e| format!("the lag of {name} cannot be read: {e}"))?;
            if !json {
                println!(
                    "{name}: {} of {} orders behind, {} versions not applied, oldest unapplied {} old",
                    lag.entities_behind,
                    lag.entities,
                    lag.events_behind,
                    age(lag.oldest_age())
                );
            }
            projections.insert(
                name.to_owned(),
                json!({
                    "entities": lag.entities,
                    "entitiesBehind": lag.entities_behind,
                    "eventsBehind": lag.events_behind,
                    "oldestUnapplied": lag.oldest_unapplied,
                    "oldestAgeSeconds": lag.oldest_age().as_secs_f64(),
                }),
            );
        }
    } else if !json {
        println!("read models: none (--read-db none)");
    }
    let pipeline = match &stream {
        Some(parts) => {
            let status = parts.inspect(bound).await?;
            if !json {
                print_pipeline_lag(&status);
            }
            pipeline_json(&status)
        }
        None => Value::Null,
    };
    if json {
        let projections = match shop.read_models {
            Some(_) => Value::Object(projections),
            None => Value::Null,
        };
        print_json(&json!({ "tenants": tenants, "projections": projections, "pipeline": pipeline }))?;
    }
    Ok(())
}

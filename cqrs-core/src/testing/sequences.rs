//! Sequences: numbering per key, rotation, formats, concurrency.

use chrono::NaiveDate;

use super::fixtures::{ctx, engine};
use super::StorageFactory;
use crate::error::Error;
use crate::sequence::{Rotation, SequenceRequest};
use crate::services::SequenceService;

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

/// Each (tenant, type, sub-codes) counts from 1 on its own.
pub async fn sequences_count_from_one_per_key(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let (a, b) = (ctx("shop-a"), ctx("shop-b"));
    let order = SequenceRequest::new("ORDER");
    for expected in 1..=3 {
        assert_eq!(engine.next(&order, &a).await.unwrap().no, expected);
    }
    assert_eq!(
        engine.next(&order, &b).await.unwrap().no,
        1,
        "tenants count separately"
    );
    assert_eq!(
        engine
            .next(&SequenceRequest::new("INVOICE"), &a)
            .await
            .unwrap()
            .no,
        1
    );
    let tokyo = SequenceRequest::new("ORDER").sub_codes(["TOKYO"]);
    assert_eq!(engine.next(&tokyo, &a).await.unwrap().no, 1);
    assert_eq!(engine.next(&tokyo, &a).await.unwrap().no, 2);
    assert_eq!(engine.next(&order, &a).await.unwrap().no, 4);
}

/// A new period starts again at 1; returning to a period continues it.
pub async fn sequences_rotate_by_period(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let next = |rotation: Rotation, date: NaiveDate| {
        let engine = engine.clone();
        let a = a.clone();
        async move {
            let request = SequenceRequest::new(format!("{rotation:?}").replace([' ', '{', '}', ':'], ""))
                .rotation(rotation)
                .date(date);
            engine.next(&request, &a).await.unwrap().no
        }
    };
    let yearly = Rotation::Yearly;
    assert_eq!(next(yearly, day(2024, 12, 31)).await, 1);
    assert_eq!(next(yearly, day(2024, 1, 1)).await, 2);
    assert_eq!(next(yearly, day(2025, 1, 1)).await, 1);
    let monthly = Rotation::Monthly;
    assert_eq!(next(monthly, day(2024, 1, 31)).await, 1);
    assert_eq!(next(monthly, day(2024, 2, 1)).await, 1);
    assert_eq!(next(monthly, day(2024, 1, 1)).await, 2);
    assert_eq!(next(monthly, day(2025, 1, 1)).await, 1);
    let daily = Rotation::Daily;
    assert_eq!(next(daily, day(2024, 2, 28)).await, 1);
    assert_eq!(next(daily, day(2024, 2, 29)).await, 1);
    assert_eq!(next(daily, day(2024, 2, 29)).await, 2);
    let fiscal = Rotation::FiscalYearly { start_month: 4 };
    assert_eq!(next(fiscal, day(2024, 3, 31)).await, 1, "FY2023");
    assert_eq!(next(fiscal, day(2024, 4, 1)).await, 1, "FY2024");
    assert_eq!(next(fiscal, day(2025, 3, 31)).await, 2, "still FY2024");
    assert_eq!(next(fiscal, day(2023, 4, 1)).await, 2, "FY2023 again");
    let none = Rotation::None;
    assert_eq!(next(none, day(2024, 1, 1)).await, 1);
    assert_eq!(next(none, day(2030, 1, 1)).await, 2);
}

/// Formats render the number with padding, dates and codes; a bad format is
/// rejected before the counter moves.
pub async fn sequences_format_numbers(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let order = SequenceRequest::new("ORDER").format("ORD-{no:06}");
    assert_eq!(engine.next(&order, &a).await.unwrap().formatted, "ORD-000001");
    assert_eq!(engine.next(&order, &a).await.unwrap().formatted, "ORD-000002");

    let invoice = SequenceRequest::new("INVOICE")
        .sub_codes(["TKY"])
        .rotation(Rotation::FiscalYearly { start_month: 4 })
        .date(day(2025, 2, 3))
        .format("{code1}-{fiscal_year}-{year}{month}{day}-{no:04}");
    let value = engine.next(&invoice, &a).await.unwrap();
    assert_eq!(
        (value.no, value.formatted.as_str()),
        (1, "TKY-2024-20250203-0001")
    );

    let bad = SequenceRequest::new("CREDIT").format("CR-{nope}");
    assert!(matches!(
        engine.next(&bad, &a).await,
        Err(Error::InvalidInput { .. })
    ));
    let good = SequenceRequest::new("CREDIT").format("CR-{no}");
    assert_eq!(
        engine.next(&good, &a).await.unwrap().formatted,
        "CR-1",
        "the bad call burnt no number"
    );
    let bad_code = SequenceRequest::new("ORDER#X");
    assert!(matches!(
        engine.next(&bad_code, &a).await,
        Err(Error::InvalidInput { .. })
    ));
}

/// 200 concurrent callers get exactly 1..=200.
pub async fn sequences_are_gap_free_under_concurrency(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let request = SequenceRequest::new("ORDER").format("ORD-{no:06}");
                engine.next(&request, &ctx("shop-a")).await.unwrap()
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        let value = task.await.expect("task");
        assert_eq!(value.formatted, format!("ORD-{:06}", value.no));
        numbers.push(value.no);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=200).collect::<Vec<u64>>());
}

use serde::Serialize;
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    pub product_code: String,
    pub name: String,
    pub quantity: u32,
    pub price: f64,
}
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub shipping_address: Address,
    pub payment_method: String,
    pub subtotal: f64,
    pub tax: f64,
    pub total: f64,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}
fn main() {
    let o = OrderState {
        customer_id: "CUST-0042".into(),
        items: vec![
            LineItem {
                product_code: "PRD-001".into(),
                name: "Wireless Mouse".into(),
                quantity: 2,
                price: 29.99,
            },
            LineItem {
                product_code: "PRD-002".into(),
                name: "USB-C Cable".into(),
                quantity: 1,
                price: 9.5,
            },
        ],
        shipping_address: Address {
            street: "123 Main St".into(),
            city: "Tokyo".into(),
            postal_code: "100-0001".into(),
            country: "JP".into(),
        },
        payment_method: "credit_card".into(),
        subtotal: 69.48,
        tax: 6.95,
        total: 76.43,
        status: "pending",
        tracking_number: None,
    };
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let mode = std::env::args().nth(1).unwrap();
    let mut total = 0;
    for _ in 0..n {
        match mode.as_str() {
            "tovec" => total += serde_json::to_vec(std::hint::black_box(&o)).unwrap().len(),
            "canon" => {
                total += cqrs_core::Attributes::from_serialize(std::hint::black_box(&o))
                    .unwrap()
                    .json()
                    .len()
            }
            "value" => {
                let v = serde_json::to_value(std::hint::black_box(&o)).unwrap();
                total += cqrs_core::Attributes::from(v).json().len()
            }
            _ => {}
        }
    }
    println!("{total}");
}

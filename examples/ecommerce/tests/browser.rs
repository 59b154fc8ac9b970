//! The API page (`/docs`, Swagger UI) in a real browser: headless Chromium
//! opens it, pastes a token in its Authorize dialog, places an order with
//! "Try it out", and sees the 201; the API then lists exactly that order.
//!
//! The browser is Debian's `chromium` (`/usr/bin/chromium`), or the one the
//! `CHROME` variable names, or a Chrome or Chromium on the `PATH`. Without
//! one, the test skips loudly, or fails when `CQRS_REQUIRE_CHROMIUM` or `CI`
//! is set (`.ci/run` installs Chromium and sets it).
//!
//! Every wait is bounded: a page that never shows what is expected fails the
//! test, with what the page shows, within seconds.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ecommerce::auth::Auth;
use ecommerce::Shop;
use headless_chrome::browser::tab::point::Point;
use headless_chrome::protocol::cdp::Input::DispatchMouseEvent;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const SECRET: &[u8] = b"browser-test-secret-of-at-least-32-bytes";
const REQUIRE_VAR: &str = "CQRS_REQUIRE_CHROMIUM";
const DEBIAN_CHROMIUM: &str = "/usr/bin/chromium";
/// How long one step may wait for the page.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The browser to drive; `None` (after saying so) when there is none and
/// none is required.
fn chromium() -> Option<PathBuf> {
    let found = match std::env::var_os("CHROME") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)).filter(|p| p.exists()),
        _ if std::path::Path::new(DEBIAN_CHROMIUM).exists() => Some(PathBuf::from(DEBIAN_CHROMIUM)),
        _ => headless_chrome::browser::default_executable().ok(),
    };
    if found.is_some() {
        return found;
    }
    let required = std::env::var_os(REQUIRE_VAR).is_some() || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "no Chromium ({DEBIAN_CHROMIUM}, $CHROME or on the PATH), but the browser test is required here \
         ({REQUIRE_VAR} or CI is set): `apt-get install -y chromium`"
    );
    // Straight to the process's stderr: the test harness captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: no Chromium ({DEBIAN_CHROMIUM}, $CHROME or on the PATH), so the browser test did \
         not run. `apt-get install -y chromium` to run it. ***"
    );
    None
}

fn order() -> Value {
    json!({
        "customerId": "CUST-042",
        "items": [{ "productCode": "PRD-002", "quantity": 1, "price": 89.50 }],
        "shippingAddress": { "street": "1 Browser Way", "city": "Osaka", "postalCode": "530-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_placed_from_the_api_page() {
    let Some(chromium) = chromium() else { return };
    let started = Instant::now();
    let shop = Shop::in_memory();
    shop.seed_demo("shop-a").await.unwrap();
    let auth = Auth::new(SECRET);
    let token = auth.token("shop-a", "browser-user", &["staff"], Duration::from_secs(600));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ecommerce::http::serve(listener, shop.clone(), auth));

    let (page_url, page_token) = (url.clone(), token.clone());
    let shown =
        tokio::task::spawn_blocking(move || place_order_in_the_page(&chromium, &page_url, &page_token))
            .await
            .unwrap();
    let (status, body) = match shown {
        Ok(shown) => shown,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status, "201", "the page shows {status}: {body}");
    let placed: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let code = placed["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no order code: {placed}"));
    assert!(code.starts_with("ORD-"), "{placed}");
    assert_eq!(placed["attributes"]["customerId"], "CUST-042", "{placed}");

    // The API agrees: exactly this one order in the shop.
    let listed: Value = reqwest::Client::new()
        .get(format!("{url}/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let codes: Vec<&str> = listed["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|o| o["code"].as_str())
        .collect();
    assert_eq!(codes, [code], "{listed}");
    let _ = writeln!(std::io::stderr(), "browser test: {:.1?}", started.elapsed());
}

/// Opens `{url}/docs` in headless Chromium, authorizes with `token`, and
/// places [`order`] through `POST /orders`: the status and the body the page
/// shows.
fn place_order_in_the_page(
    chromium: &std::path::Path,
    url: &str,
    token: &str,
) -> Result<(String, String), String> {
    let browser = Browser::new(LaunchOptions {
        path: Some(chromium.to_owned()),
        headless: true,
        // As root (CI containers) Chromium runs only without its sandbox;
        // the page is our own, on loopback.
        sandbox: false,
        window_size: Some((1280, 1600)),
        // Bounds every call to the browser, and its start.
        idle_browser_timeout: Duration::from_secs(20),
        ..LaunchOptions::default()
    })
    .map_err(failed(&format!("starting {}", chromium.display())))?;
    let tab = browser.new_tab().map_err(failed("opening a tab"))?;
    let result = drive(&tab, url, token);
    // On failure, what the page showed.
    result.map_err(|e: String| {
        let text = tab
            .evaluate("document.body ? document.body.innerText : ''", false)
            .ok()
            .and_then(|o| o.value)
            .and_then(|v| v.as_str().map(|s| s.chars().take(3000).collect::<String>()))
            .unwrap_or_default();
        format!("{e}\nThe page at {} showed:\n{text}", tab.get_url())
    })
}

/// An error of a step, saying which.
fn failed<E: std::fmt::Display>(step: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{step}: {e}")
}

fn drive(tab: &Tab, url: &str, token: &str) -> Result<(String, String), String> {
    let op = "#operations-orders-create_order";
    // A mouse click on the middle of the element, once it shows.
    let click = |selector: &str, what: &str| -> Result<(), String> {
        let point = locate(tab, selector).map_err(failed(what))?;
        press_and_release(tab, point).map_err(failed(what))
    };

    // `/docs` redirects to the page.
    tab.navigate_to(&format!("{url}/docs"))
        .and_then(|t| t.wait_until_navigated())
        .map_err(failed("opening /docs"))?;

    // Paste the token: Authorize, the bearer field, Authorize, Close.
    click(".auth-wrapper .authorize", "the Authorize button")?;
    click("#auth-bearer-value", "the bearer token field")?;
    tab.send_character(token).map_err(failed("pasting the token"))?;
    click(".auth-btn-wrapper .authorize", "the dialog's Authorize button")?;
    locate(tab, ".auth-btn-wrapper button[aria-label='Remove authorization']")
        .map_err(failed("the dialog taking the token"))?;
    click(".auth-btn-wrapper .btn-done", "the dialog's Close button")?;

    // Expand POST /orders, Try it out, the body, Execute.
    click(
        &format!("{op} .opblock-summary-control"),
        "expanding POST /orders",
    )?;
    click(&format!("{op} .try-out__btn"), "Try it out")?;
    click(&format!("{op} textarea.body-param__text"), "the request body")?;
    // Type over the example body (a real input event, which the page's
    // React state follows).
    tab.evaluate("document.activeElement.select()", false)
        .map_err(failed("selecting the example body"))?;
    tab.send_character(&order().to_string())
        .map_err(failed("typing the order"))?;
    click(&format!("{op} .execute"), "Execute")?;

    let row = format!("{op} .live-responses-table tr.response");
    locate(tab, &format!("{row} .response-col_description pre")).map_err(failed("the server's response"))?;
    let text = |js: String| -> Result<String, String> {
        let value = tab
            .evaluate(&js, false)
            .map_err(failed("reading the page"))?
            .value;
        Ok(value
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    };
    let inner_text =
        |selector: String| text(format!("document.querySelector({}).innerText", json!(selector)));
    let status = inner_text(format!("{row} .response-col_status"))?;
    let body = inner_text(format!("{row} .response-col_description pre"))?;
    // The status cell may add "Undocumented".
    let status = status.split_whitespace().next().unwrap_or_default().to_owned();

    // Everything the page loaded or fetched came from the server: it works offline.
    let elsewhere = text(
        "JSON.stringify(performance.getEntriesByType('resource').map(e => e.name) \
         .filter(name => !name.startsWith(location.origin + '/')))"
            .to_owned(),
    )?;
    if elsewhere != "[]" {
        return Err(format!("the page reached other hosts: {elsewhere}"));
    }
    Ok((status, body))
}

/// A left click at `point`: the mouse pressed and released there.
fn press_and_release(tab: &Tab, point: Point) -> Result<(), String> {
    for kind in ["mousePressed", "mouseReleased"] {
        let event: DispatchMouseEvent = serde_json::from_value(json!({
            "type": kind, "x": point.x, "y": point.y, "button": "left", "clickCount": 1,
        }))
        .map_err(|e| e.to_string())?;
        tab.call_method(event).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Waits, in the page, for an element of `selector` with a size (at most
/// [`STEP_TIMEOUT`]); scrolls it into view and answers its middle. One round
/// trip to the browser, however long the page takes.
fn locate(tab: &Tab, selector: &str) -> Result<Point, String> {
    let js = format!(
        r#"new Promise(resolve => {{
            const selector = {selector}, deadline = Date.now() + {ms};
            const look = () => {{
                const element = document.querySelector(selector);
                if (element) {{
                    element.scrollIntoView({{ block: "center", inline: "center", behavior: "instant" }});
                    const r = element.getBoundingClientRect();
                    if (r.width > 0 && r.height > 0) {{
                        return resolve(JSON.stringify({{ x: r.x + r.width / 2, y: r.y + r.height / 2 }}));
                    }}
                }}
                if (Date.now() > deadline) {{
                    return resolve(JSON.stringify({{ missing: element ? "not visible" : "not on the page" }}));
                }}
                setTimeout(look, 20);
            }};
            look();
        }})"#,
        selector = json!(selector),
        ms = STEP_TIMEOUT.as_millis(),
    );
    let found = tab.evaluate(&js, true).map_err(|e| e.to_string())?.value;
    let found: Value = found
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| format!("{selector}: no answer from the page ({found:?})"))?;
    match (found["x"].as_f64(), found["y"].as_f64()) {
        (Some(x), Some(y)) => Ok(Point { x, y }),
        _ => Err(format!("{selector}: {} after {STEP_TIMEOUT:?}", found["missing"])),
    }
}

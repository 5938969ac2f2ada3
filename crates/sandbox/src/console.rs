//! The sandbox's customer console: a page where a person writes to the fake WhatsApp number as
//! a customer. The message goes out as Meta sends it — a signed webhook to the callback the
//! product registered — so it arrives only once `/setup` subscribed the app to the WABA and
//! registered the webhook, as with the real Meta.

use axum::{Form, Router, extract::State, response::Html, routing::get};

use crate::{
    Served,
    bitrix::pages::escape,
    meta::{Customer, InboundMessage, WebhookSender},
};

#[derive(Clone)]
struct Console {
    hooks: WebhookSender,
    product: String,
}

/// Serves the console on a fresh loopback port until dropped.
pub async fn start(hooks: WebhookSender, product: &str) -> Served {
    let app = Router::new()
        .route("/", get(show).post(write))
        .with_state(Console {
            hooks,
            product: product.to_string(),
        });
    crate::serve(app).await
}

#[derive(serde::Deserialize)]
struct Message {
    wa_id: String,
    name: String,
    text: String,
}

fn page(c: &Console, result: &str, m: Option<&Message>) -> Html<String> {
    let (wa_id, name) = m.map_or(("4917612345678", "Anna Schmidt"), |m| {
        (m.wa_id.as_str(), m.name.as_str())
    });
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Customer console — sandbox</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}\
         label{{display:block;margin:.5rem 0}} .ok{{color:#16794c}} .bad{{color:#b42318}}</style></head><body>\
         <h1>Write to the WhatsApp number as a customer</h1>{result}\
         <form method=\"post\" action=\"/\">\
         <label>Customer number (digits) <input name=\"wa_id\" id=\"wa_id\" value=\"{}\"></label>\
         <label>Profile name <input name=\"name\" id=\"name\" value=\"{}\"></label>\
         <label>Message <input name=\"text\" id=\"text\" size=\"60\"></label>\
         <button type=\"submit\" id=\"send\">Send</button></form>\
         <p>Meta posts it to the webhook that Switchboard ({}) registered; see it arrive in the fake \
         portal's Open Channels page.</p></body></html>",
        escape(wa_id),
        escape(name),
        escape(&c.product)
    ))
}

async fn show(State(c): State<Console>) -> Html<String> {
    page(&c, "", None)
}

async fn write(State(c): State<Console>, Form(m): Form<Message>) -> Html<String> {
    let wa_id: String = m
        .wa_id
        .chars()
        .filter(char::is_ascii_digit)
        .take(20)
        .collect();
    let text: String = m.text.chars().take(4096).collect();
    if wa_id.is_empty() || text.trim().is_empty() {
        return page(
            &c,
            "<p class=\"bad\" id=\"result\">Give the customer's number (digits) and a message.</p>",
            Some(&m),
        );
    }
    let name: String = m.name.chars().take(100).collect();
    let customer = Customer::new(&wa_id, &name);
    let payload = c
        .hooks
        .payload()
        .message(&customer, InboundMessage::text(&text));
    let result = match c.hooks.deliver(&payload).await {
        Ok(r) if r.status().as_u16() == 200 => {
            "<p class=\"ok\" id=\"result\">Sent; Switchboard answered 200.</p>".to_string()
        }
        Ok(r) => format!(
            "<p class=\"bad\" id=\"result\">Switchboard answered HTTP {}.</p>",
            r.status().as_u16()
        ),
        Err(e) => format!(
            "<p class=\"bad\" id=\"result\">Not sent: {}. Finish the Meta steps on Switchboard's /setup first.</p>",
            escape(&e.to_string())
        ),
    };
    page(&c, &result, Some(&m))
}

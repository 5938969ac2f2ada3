//! `switchboard-sandbox`: the fakes outside the test suite.
//!
//! - `demo`: starts the fakes and the product, sends a WhatsApp message in, shows it arrive in
//!   the fake Bitrix chat, sends an operator reply back to the fake Meta, places a PBX
//!   click-to-call through the bridge, and prints where to look. No account anywhere.
//! - `serve`: runs the fakes on fixed loopback ports until Ctrl-C, for trying the product by hand.

use std::process::Command;

use anyhow::Context;
use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, FakeBitrix},
    harness::{fakes_env, free_port, poll, sibling, start, switchboard},
    meta::{Customer, FakeMeta, InboundMessage, MetaConfig},
    pbx::FakePbx,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => demo().await,
        Some("serve") => serve().await,
        _ => {
            eprintln!("usage: switchboard-sandbox demo | serve");
            std::process::exit(2);
        }
    }
}

fn step(n: u32, text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m{n}. {text}\x1b[0m");
    } else {
        println!("\n{n}. {text}");
    }
}

/// Waits up to 20 s for `f` to give a value; the demo reports a timeout instead of panicking.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    poll(20, || std::future::ready(f()))
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

async fn demo() -> anyhow::Result<()> {
    println!(
        "Switchboard demo: every outside service is a local fake; nothing leaves this machine."
    );
    let meta_cfg = MetaConfig::default();
    let meta = FakeMeta::start(meta_cfg.clone()).await;
    let bitrix_cfg = BitrixConfig::default();
    let bitrix = FakeBitrix::start(bitrix_cfg.clone()).await;
    let pbx = FakePbx::start().await;
    pbx.add_org("org_1938b7c2", "secret_demo", "GrandEstancia");
    println!("   fake Meta Graph  {}", meta.url());
    println!("   fake Bitrix24    {}", bitrix.portal_url());
    println!("   fake AstraPBX    {}", pbx.url());

    let dir = std::env::temp_dir().join(format!("switchboard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let admin = "demo-admin-token";
    let master_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    let env: Vec<(String, String)> = [
        ("SWITCHBOARD_PUBLIC_URL", base.as_str()),
        ("SWITCHBOARD_ADMIN_TOKEN", admin),
        ("SWITCHBOARD_MASTER_KEY", &master_key),
        ("SWITCHBOARD_META_VERIFY_TOKEN", "demo-verify"),
        ("SWITCHBOARD_PBX_BASE_URL", &pbx.url()),
        ("SWITCHBOARD_WABRIDGES_TOKEN", "demo-hook-token"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(fakes_env(&meta, &bitrix))
    .collect();

    step(1, "Start switchboard (SQLite in a scratch folder)");
    let product = start(switchboard(&dir, port, &env), port, "/health")
        .await
        .context("starting the switchboard binary (build it first: cargo build -p switchboard)")?;
    println!(
        "   healthy at {base} after {} ms",
        product.start_to_healthy.as_millis()
    );

    step(
        2,
        "Install the Bitrix24 app, register and activate the connector",
    );
    let install = bitrix.install_into(&format!("{base}/bitrix/install")).await;
    println!("   install handler answered {:?}", install.status);
    for args in [
        ["bitrix", "register-connector"],
        ["bitrix", "activate-connector"],
    ] {
        let out = Command::new(sibling("switchboard"))
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        });
        println!(
            "   $ switchboard {}\n     {}",
            args.join(" "),
            text.trim().replace('\n', "\n     ")
        );
        anyhow::ensure!(
            out.status.success(),
            "`switchboard {}` failed",
            args.join(" ")
        );
    }

    step(3, "A customer writes on WhatsApp");
    meta.set_webhook_target(format!("{base}/webhook/whatsapp"));
    let customer = Customer::new("4917612345678", "Anna Schmidt");
    let sent = meta
        .webhooks()
        .send_inbound(
            &customer,
            InboundMessage::text("Hi, has order 1042 shipped?"),
        )
        .await?;
    println!(
        "   Meta → POST /webhook/whatsapp ({}), answered {}",
        sent.wamid, sent.status
    );
    let arrived = eventually("the message in the Bitrix chat", || {
        bitrix
            .messages_in_chat("4917612345678")
            .into_iter()
            .find_map(|m| match m {
                ChatMessage::Customer(c) => c.text,
                _ => None,
            })
    })
    .await?;
    println!("   Bitrix Open Channel chat now shows: \"{arrived}\"");
    let leads = bitrix.leads();
    println!("   CRM leads created: {}", leads.len());

    step(4, "The operator answers in Bitrix24 (BBCode)");
    let reply = "[b]Yes![/b] Order 1042 ships [i]today[/i].";
    let op = bitrix
        .operator_reply("4917612345678", reply, Vec::new())
        .await;
    println!(
        "   Bitrix → POST /bitrix/events (OnImConnectorMessageAdd), message {}",
        op.message_id
    );
    let out = eventually("the reply at Meta", || {
        meta.sent_messages()
            .into_iter()
            .find(|m| m.kind == "text")
            .map(|m| {
                m.body["text"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    })
    .await?;
    println!("   Meta Graph received the WhatsApp text: \"{out}\"");

    step(5, "A WhatsApp button asks for a call back (PBX bridge)");
    let resp = reqwest::Client::new()
        .post(format!("{base}/whatsapp-bridge"))
        .json(&serde_json::json!({
            "api_key": "org_1938b7c2", "api_secret": "secret_demo",
            "endpoint": "/api/v1/calls/click-to-call",
            "body": {"from": "9876543210", "from_type": "external", "to": "5001", "to_type": "queue",
                     "caller_id": "08065978002", "timeout": 30}
        }))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.text().await?;
    println!("   POST /whatsapp-bridge → {status} {body}");
    println!(
        "   AstraPBX placed {} call(s); logins: {}",
        pbx.calls().len(),
        pbx.login_count("org_1938b7c2")
    );

    step(6, "Where to look");
    for (path, what) in [
        ("/health".to_string(), "readiness JSON"),
        (format!("/setup?token={admin}"), "setup checklist"),
        (
            format!("/admin/events?token={admin}"),
            "audit log (replay from here)",
        ),
        (
            format!("/admin/jobs?token={admin}"),
            "queue and dead letters",
        ),
        ("/metrics".to_string(), "Prometheus metrics"),
    ] {
        println!("   {:<62} {what}", format!("{base}{path}"));
    }
    println!("\nDemo finished; the product and the fakes stop now.");
    drop(product);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn serve() -> anyhow::Result<()> {
    let meta = FakeMeta::start(MetaConfig::default()).await;
    let bitrix = FakeBitrix::start(BitrixConfig::default()).await;
    let pbx = FakePbx::start().await;
    pbx.add_org("demo_org", "demo_secret", "Demo Org");
    println!(
        "fake Meta Graph  {}  (access token and app secret: MetaConfig::default())",
        meta.url()
    );
    println!("fake Bitrix24    {}", bitrix.portal_url());
    println!(
        "fake AstraPBX    {}  (org demo_org / demo_secret)",
        pbx.url()
    );
    println!("Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

//! `switchboard-sandbox`: the fakes outside the test suite.
//!
//! - `demo`: starts the fakes and the product with two WhatsApp numbers on two Open Channel
//!   lines, sends a WhatsApp message to each, shows each arrive in its own line's chat, sends an
//!   operator reply back from the right number, places a PBX click-to-call through the bridge,
//!   and prints where to look. No account anywhere.
//! - `serve`: starts the fakes and the product and stays up until Ctrl-C, printing the URLs, the
//!   admin token and the fake accounts' credentials, for walking through `/setup` by hand; a
//!   small console page writes to the WhatsApp number as a customer.
//! - `fakes`: the fakes alone, their URLs printed, until Ctrl-C, for running the product against
//!   them with settings of your own (the API check in CI does).

use std::process::Command;

use anyhow::Context;
use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, FakeBitrix},
    harness::{fakes_env, free_port, poll, sibling, start, switchboard},
    meta::{BusinessNumber, Customer, FakeMeta, InboundMessage, MetaConfig},
    pbx::FakePbx,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => demo().await,
        Some("serve") => serve().await,
        Some("fakes") => fakes().await,
        _ => {
            eprintln!("usage: switchboard-sandbox demo | serve | fakes");
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

/// The demo's second WhatsApp number and the Open Channel line it is bound to.
const SALES_NUMBER: &str = "998877665544332";
const SALES_LINE: i64 = 5;

async fn demo() -> anyhow::Result<()> {
    println!(
        "Switchboard demo: every outside service is a local fake; nothing leaves this machine."
    );
    // Two numbers of one Meta app, as a team with support and sales has: each relays into its
    // own Open Channel line.
    let sales = BusinessNumber::new(SALES_NUMBER, "4930999888777");
    let meta_cfg = MetaConfig {
        extra_numbers: vec![sales],
        ..MetaConfig::default()
    };
    let support_number = meta_cfg.phone_number_id.clone();
    let meta = FakeMeta::start(meta_cfg.clone()).await;
    let bitrix_cfg = BitrixConfig {
        extra_lines: vec![SALES_LINE],
        ..BitrixConfig::default()
    };
    let support_line = bitrix_cfg.line_id;
    let bitrix = FakeBitrix::start(bitrix_cfg.clone()).await;
    let pbx = FakePbx::start().await;
    pbx.add_org("org_1938b7c2", "secret_demo", "GrandEstancia");
    println!("   fake Meta Graph  {}", meta.url());
    println!("   fake Bitrix24    {}", bitrix.portal_url());
    println!("   fake AstraPBX    {}", pbx.url());

    let dir = std::env::temp_dir().join(format!("switchboard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[[bitrix.channels]]\nphone_number_id = \"{support_number}\"\nline_id = {support_line}\nname = \"Support\"\n\n\
             [[bitrix.channels]]\nphone_number_id = \"{SALES_NUMBER}\"\nline_id = {SALES_LINE}\nname = \"Sales\"\n"
        ),
    )?;
    let config_path = config.display().to_string();
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
        ("SWITCHBOARD_CONFIG", &config_path),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(fakes_env(&meta, &bitrix))
    .collect();

    step(
        1,
        "Start switchboard (SQLite in a scratch folder, two WhatsApp numbers on two lines)",
    );
    println!(
        "   {}",
        std::fs::read_to_string(&config)?
            .trim()
            .replace('\n', "\n   ")
    );
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

    step(3, "Customers write to each WhatsApp number");
    meta.set_webhook_target(format!("{base}/webhook/whatsapp"));
    let anna = Customer::new("4917612345678", "Anna Schmidt");
    let ben = Customer::new("4915198765432", "Ben Weber");
    let hooks = meta.webhooks();
    for (customer, number, line, text) in [
        (
            &anna,
            support_number.as_str(),
            support_line,
            "Hi, has order 1042 shipped?",
        ),
        (&ben, SALES_NUMBER, SALES_LINE, "Do you ship to Vienna?"),
    ] {
        let payload = hooks
            .payload_to(number)
            .message(customer, InboundMessage::text(text));
        let status = hooks.deliver(&payload).await?.status();
        println!(
            "   {} → number {number}: POST /webhook/whatsapp answered {status}",
            customer.wa_id
        );
        let arrived = eventually("the message in its line's chat", || {
            bitrix
                .chat_on(line, &customer.wa_id)?
                .messages
                .into_iter()
                .find_map(|m| match m {
                    ChatMessage::Customer(c) => c.text,
                    _ => None,
                })
        })
        .await?;
        println!("   Bitrix Open Channel line {line} shows: \"{arrived}\"");
    }
    println!("   CRM leads created: {}", bitrix.leads().len());

    step(4, "The sales operator answers in line 5 (BBCode)");
    let reply = "[b]Yes![/b] We ship to Vienna [i]every day[/i].";
    let op = bitrix
        .operator_reply_on(SALES_LINE, &ben.wa_id, reply, Vec::new())
        .await;
    println!(
        "   Bitrix → POST /bitrix/events (OnImConnectorMessageAdd, LINE {SALES_LINE}), message {}",
        op.message_id
    );
    let (out, from) = eventually("the reply at Meta", || {
        meta.sent_messages()
            .into_iter()
            .find(|m| m.kind == "text")
            .map(|m| {
                (
                    m.body["text"]["body"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    m.from_phone_number_id,
                )
            })
    })
    .await?;
    println!("   Meta Graph received from number {from}: \"{out}\"");
    anyhow::ensure!(from == SALES_NUMBER, "the reply left from the wrong number");

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
    println!(
        "\nDemo finished; the product and the fakes stop now. `just sandbox` starts them for you to explore, until Ctrl-C."
    );
    drop(product);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `serve`: the fakes and the product, wired together and left running for a person to explore:
/// the product starts with only what a deployment puts in its environment (public URL, admin
/// token, master key, where Meta and Bitrix24 are), so `/setup` walks through the whole set-up
/// with the fake accounts' credentials, printed here.
async fn serve() -> anyhow::Result<()> {
    let meta = FakeMeta::start(MetaConfig {
        // A new app is subscribed to nothing: /setup's button does it.
        subscribed: false,
        ..MetaConfig::default()
    })
    .await;
    let bitrix = FakeBitrix::start(BitrixConfig {
        preinstalled: false,
        extra_lines: vec![SALES_LINE],
        ..BitrixConfig::default()
    })
    .await;
    let pbx = FakePbx::start().await;
    pbx.add_org("demo_org", "demo_secret", "Demo Org");

    let dir = std::env::temp_dir().join(format!("switchboard-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let admin = hex::encode(rand::random::<[u8; 16]>());
    let master_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    let (mc, bc) = (meta.config().clone(), bitrix.config());
    let env: Vec<(String, String)> = [
        ("SWITCHBOARD_PUBLIC_URL", base.clone()),
        ("SWITCHBOARD_ADMIN_TOKEN", admin.clone()),
        ("SWITCHBOARD_MASTER_KEY", master_key),
        ("SWITCHBOARD_META_GRAPH_URL", meta.url()),
        ("SWITCHBOARD_META_GRAPH_VERSION", mc.graph_version.clone()),
        ("SWITCHBOARD_BITRIX_OAUTH_URL", bitrix.oauth_url()),
        ("SWITCHBOARD_PBX_BASE_URL", pbx.url()),
        ("SWITCHBOARD_WABRIDGES_TOKEN", "sandbox-hook-token".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let product = start(switchboard(&dir, port, &env), port, "/health")
        .await
        .context("starting the switchboard binary (build it first: cargo build -p switchboard)")?;
    let console = sandbox::console::start(meta.webhooks(), &base).await;

    println!(
        "Switchboard sandbox: every outside service is a local fake; nothing leaves this machine."
    );
    println!();
    println!("Switchboard        {base}");
    println!("  setup checklist  {base}/setup?token={admin}");
    println!("  admin token      {admin}");
    println!("Fake Bitrix24      {}", bitrix.portal_url());
    println!(
        "  local app page   {}{}",
        bitrix.portal_url(),
        sandbox::bitrix::pages::LOCAL_APP_PATH
    );
    println!(
        "  Open Channels    {}{}",
        bitrix.portal_url(),
        sandbox::bitrix::pages::OPEN_LINES_PATH
    );
    println!("Fake Meta Graph    {}", meta.url());
    println!(
        "Customer console   {}  (write to the WhatsApp number as a customer)",
        console.url()
    );
    println!(
        "Fake AstraPBX      {}  (org demo_org / demo_secret)",
        pbx.url()
    );
    println!();
    println!("Type these into {base}/admin/credentials, then follow /setup:");
    for (what, value) in [
        ("Meta App ID", mc.app_id.as_str()),
        ("Meta App Secret", mc.app_secret.as_str()),
        ("Meta Access Token", mc.access_token.as_str()),
        ("Meta Phone Number ID", mc.phone_number_id.as_str()),
        ("Meta WhatsApp Business Account ID", mc.waba_id.as_str()),
        ("Bitrix24 Portal URL", bitrix.portal_url().as_str()),
        ("Bitrix24 Client ID", bc.client_id.as_str()),
        ("Bitrix24 Client Secret", bc.client_secret.as_str()),
    ] {
        println!("  {what:<36} {value}");
    }
    println!();
    println!("Running until Ctrl-C.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = terminate.recv() => {}
    }
    println!("Stopping.");
    drop(console);
    drop(product);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The fakes alone until Ctrl-C: Meta's Graph API, a Bitrix24 portal and AstraPBX (with the
/// org `demo_org` / `demo_secret`).
async fn fakes() -> anyhow::Result<()> {
    let meta = FakeMeta::start(MetaConfig::default()).await;
    let bitrix = FakeBitrix::start(BitrixConfig::default()).await;
    let pbx = FakePbx::start().await;
    pbx.add_org("demo_org", "demo_secret", "Demo Org");
    println!("fake Meta Graph  {}", meta.url());
    println!("fake Bitrix24    {}", bitrix.portal_url());
    println!(
        "fake AstraPBX    {}  (org demo_org / demo_secret)",
        pbx.url()
    );
    println!("Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

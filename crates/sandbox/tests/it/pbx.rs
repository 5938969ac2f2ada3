//! The fake AstraPBX over real HTTP: login in each response shape, the token's shape and life,
//! every way a token stops working, and the API the bridge forwards to.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use sandbox::pbx::{FakePbx, TokenField};
use serde_json::{Value, json};

const KEY: &str = "org_1938b5c0";
const SECRET: &str = "secret_xxxxx";

struct TestPbx {
    pbx: FakePbx,
    http: reqwest::Client,
}

impl TestPbx {
    async fn start() -> TestPbx {
        let pbx = FakePbx::start().await;
        pbx.add_org(KEY, SECRET, "GrandEstancia");
        TestPbx {
            pbx,
            http: reqwest::Client::new(),
        }
    }

    async fn login_raw(&self, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/auth/login", self.pbx.url()))
            .json(&body)
            .send()
            .await
            .expect("login request");
        (response.status(), response.json().await.expect("JSON body"))
    }

    async fn login(&self, secret: &str) -> String {
        let (status, body) = self
            .login_raw(json!({"api_key": KEY, "api_secret": secret}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().expect("token field").to_string()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.pbx.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API request");
        (response.status(), response.json().await.expect("JSON body"))
    }

    async fn click_to_call(&self, token: &str) -> (StatusCode, Value) {
        let body = json!({
            "from": "9876543210", "from_type": "external", "to": "5001", "to_type": "queue",
            "caller_id": "08065978002", "timeout": 30
        });
        self.call(
            reqwest::Method::POST,
            "/api/v1/calls/click-to-call",
            Some(token),
            Some(body),
        )
        .await
    }

    async fn users(&self, token: Option<&str>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, "/api/v1/users", token, None)
            .await
    }

    async fn list_users(&self, token: &str) -> StatusCode {
        self.call(reqwest::Method::GET, "/api/v1/users", Some(token), None)
            .await
            .0
    }
}

fn claims(jwt: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "header.payload.signature");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn login_answers_in_each_configured_shape() {
    let app = TestPbx::start().await;
    let creds = json!({"api_key": KEY, "api_secret": SECRET});
    let shapes = [
        (TokenField::Token, "/token"),
        (TokenField::AccessToken, "/access_token"),
        (TokenField::DataToken, "/data/token"),
    ];
    for (field, pointer) in shapes {
        app.pbx.set_token_field(field);
        let (status, body) = app.login_raw(creds.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let token = body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{field:?}: {body}"));
        assert_eq!(app.list_users(token).await, StatusCode::OK, "{field:?}");
    }
    assert_eq!(app.pbx.login_count(KEY), 3);
}

#[tokio::test]
async fn token_is_a_jwt_naming_the_org_and_living_24_hours() {
    let app = TestPbx::start().await;
    let claims = claims(&app.login(SECRET).await);
    assert_eq!(claims["sub"], KEY);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 24 * 60 * 60);

    app.pbx.set_token_ttl(60);
    let claims = self::claims(&app.login(SECRET).await);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
}

#[tokio::test]
async fn bad_or_missing_credentials_are_refused() {
    let app = TestPbx::start().await;
    for creds in [
        json!({"api_key": KEY, "api_secret": "wrong"}),
        json!({"api_key": "org_unknown", "api_secret": SECRET}),
    ] {
        let (status, body) = app.login_raw(creds).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({"error": "Invalid credentials"}));
    }
    let (status, _) = app.login_raw(json!({"api_key": KEY})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn api_refuses_missing_forged_expired_and_pre_restart_tokens() {
    let app = TestPbx::start().await;
    let unauthorized = (StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));

    assert_eq!(app.users(None).await, unauthorized);
    let token = app.login(SECRET).await;
    let (head, rest) = token.split_once('.').unwrap();
    let forged = format!("{head}.{}", rest.replace('.', ".x"));
    assert_eq!(app.users(Some(&forged)).await, unauthorized);

    app.pbx.expire_all_tokens();
    assert_eq!(app.users(Some(&token)).await, unauthorized);
    let token = app.login(SECRET).await;
    assert_eq!(app.users(Some(&token)).await.0, StatusCode::OK);

    app.pbx.restart();
    assert_eq!(app.users(Some(&token)).await, unauthorized);
    let token = app.login(SECRET).await;
    assert_eq!(app.users(Some(&token)).await.0, StatusCode::OK);

    app.pbx.set_token_ttl(0);
    let stillborn = app.login(SECRET).await;
    assert_eq!(app.users(Some(&stillborn)).await, unauthorized);
}

#[tokio::test]
async fn forced_401s_hit_valid_tokens_then_stop() {
    let app = TestPbx::start().await;
    let token = app.login(SECRET).await;
    app.pbx.force_401_next(2);
    assert_eq!(app.list_users(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.list_users(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.list_users(&token).await, StatusCode::OK);
}

#[tokio::test]
async fn rotating_the_secret_retires_the_old_secret_and_its_tokens() {
    let app = TestPbx::start().await;
    let old_token = app.login(SECRET).await;
    app.pbx.rotate_secret(KEY, "secret_rotated");

    assert_eq!(app.list_users(&old_token).await, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .login_raw(json!({"api_key": KEY, "api_secret": SECRET}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let new_token = app.login("secret_rotated").await;
    assert_eq!(app.list_users(&new_token).await, StatusCode::OK);
}

#[tokio::test]
async fn click_to_call_is_validated_recorded_and_listed() {
    let app = TestPbx::start().await;
    let token = app.login(SECRET).await;

    let (status, body) = app.click_to_call(&token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "initiated");
    let call_id = body["call_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(call_id).is_ok(), "{call_id}");

    let calls = app.pbx.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].from.as_str(), calls[0].to.as_str()),
        ("9876543210", "5001")
    );
    assert_eq!(calls[0].caller_id.as_deref(), Some("08065978002"));
    assert_eq!(calls[0].org, KEY);

    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/calls/click-to-call",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Missing required fields"})
        )
    );

    app.click_to_call(&token).await;
    app.click_to_call(&token).await;
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/call-records?limit=2",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    assert_eq!(body["total"], 3);
    let recorded = app.pbx.recorder().matching("/api/v1/call-records");
    assert_eq!(recorded[0].query.as_deref(), Some("limit=2"));
}

#[tokio::test]
async fn users_ring_target_can_be_changed_and_unknown_paths_are_404() {
    let app = TestPbx::start().await;
    let token = app.login(SECRET).await;
    let user_id = app.pbx.users(KEY)[0].id.clone();

    let (status, body) = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/users/{user_id}"),
            Some(&token),
            Some(json!({"ring_target": "phone"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.pbx.users(KEY)[0].ring_target, "phone");

    let (status, _) = app
        .call(
            reqwest::Method::PUT,
            "/api/v1/users/no-such-user",
            Some(&token),
            Some(json!({"ring_target": "phone"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/nothing-here",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn delay_slows_answers_and_shutdown_refuses_connections() {
    let app = TestPbx::start().await;
    let token = app.login(SECRET).await;
    // Warm a keep-alive connection: shutdown must close it, not leave it answering.
    assert_eq!(app.list_users(&token).await, StatusCode::OK);

    app.pbx.set_delay(Duration::from_millis(300));
    let slow = app
        .http
        .get(format!("{}/api/v1/users", app.pbx.url()))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(slow.unwrap_err().is_timeout());

    app.pbx.set_delay(Duration::ZERO);
    app.pbx.shutdown().await;
    // The pooled client may first hit its closed keep-alive connection; a fresh one must be
    // refused outright.
    let pooled = app
        .http
        .get(format!("{}/api/v1/users", app.pbx.url()))
        .send()
        .await;
    assert!(pooled.is_err());
    let fresh = reqwest::get(format!("{}/api/v1/users", app.pbx.url())).await;
    assert!(fresh.unwrap_err().is_connect());

    let nobody = reqwest::get(format!("{}/api/v1/users", FakePbx::unreachable_url())).await;
    assert!(nobody.unwrap_err().is_connect());
}

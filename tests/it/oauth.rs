//! OAuth 2.0 to the smarthost: the relay gets an access token from a local HTTPS
//! token endpoint with the refresh token in a file, keeps it in memory, and authenticates to a
//! STARTTLS smarthost that accepts only that token (XOAUTH2, or OAUTHBEARER when offered). A
//! refused cached token is refreshed once; a failing endpoint holds the mail without a bounce.
//! The LAN side stays plain SMTP without AUTH.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

const CLIENT_ID: &str = "9e5f94bc-e8a4-4e73-b8be-63364c29d753";
const REFRESH: &str = "0.AX8A-refresh/token+1";

struct Site {
    pki: TestPki,
    state: OAuthShared,
    endpoint: TokenEndpoint,
    smarthost: Smarthost,
    dir: TestDir,
}

impl Site {
    fn start(oauthbearer: bool) -> Self {
        let pki = TestPki::loopback();
        let state = Arc::new(Mutex::new(OAuthState {
            refresh_token: REFRESH.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            ..OAuthState::default()
        }));
        let endpoint = TokenEndpoint::start(&pki.cert, &pki.key, &state);
        let smarthost = Smarthost::builder()
            .oauth(&pki, &state, oauthbearer)
            .start();
        let dir = TestDir::new();
        std::fs::write(dir.join("refresh-token"), format!("{REFRESH}\n")).unwrap();
        Self {
            pki,
            state,
            endpoint,
            smarthost,
            dir,
        }
    }

    fn relay(&self) -> RelayProcess {
        let refresh = self.dir.join("refresh-token");
        let config = RelayConfig::with_smarthost(self.smarthost.port())
            .smarthost_tls("starttls", self.pki.ca.clone())
            .smarthost_keys(&format!(
                "username = \"site@example.com\"\noauth2_token_url = {}\n\
                 oauth2_client_id = \"{CLIENT_ID}\"\noauth2_refresh_token_file = {}\n\
                 oauth2_scope = \"https://outlook.office.com/SMTP.Send offline_access\"",
                toml_string(&self.endpoint.url()),
                toml_string(&refresh.to_string_lossy())
            ));
        RelayProcess::start_with(config)
    }

    fn send(&self, relay: &RelayProcess, id: &str) {
        let mut client = RawClient::ready(relay.port());
        assert_queued(&client.send_mail("cam@lan.test", &["ops@example.com"], &tagged_message(id)));
    }

    fn wait_delivered(&self, relay: &RelayProcess, n: usize) {
        if self
            .smarthost
            .wait_for(n, Duration::from_secs(20))
            .is_none()
        {
            let state = self.state.lock().unwrap();
            relay.fail(&format!(
                "{n} messages not delivered; {} issued, auths {:?}",
                state.issued, state.auths
            ));
        }
    }

    /// (mechanism, token, accepted) of every AUTH so far; the user must always be the mailbox.
    fn auths(&self) -> Vec<(String, String, bool)> {
        let state = self.state.lock().unwrap();
        state
            .auths
            .iter()
            .map(|(mechanism, user, token, ok)| {
                assert_eq!(user, "site@example.com");
                (mechanism.clone(), token.clone(), *ok)
            })
            .collect()
    }
}

fn auth(mechanism: &str, token: &str, ok: bool) -> (String, String, bool) {
    (mechanism.to_owned(), token.to_owned(), ok)
}

fn assert_no_secrets(relay: &RelayProcess, tokens: &[&str]) {
    let log = relay.log();
    for secret in [REFRESH, "refresh-2"].iter().chain(tokens) {
        if log.contains(secret) {
            relay.fail(&format!("the log shows the secret {secret:?}"));
        }
    }
}

#[test]
fn token_is_fetched_once_and_reused_for_the_next_session() {
    let site = Site::start(false);
    let relay = site.relay();
    site.send(&relay, "oauth-1");
    site.wait_delivered(&relay, 1);
    // The first session has ended (its batch was empty); the second message opens another,
    // which must take the token from memory.
    site.send(&relay, "oauth-2");
    site.wait_delivered(&relay, 2);
    let state = site.state.lock().unwrap();
    assert_eq!(
        state.issued, 1,
        "the token endpoint was asked more than once"
    );
    assert_eq!(state.requests.len(), 1);
    let form = &state.requests[0];
    assert!(
        form.starts_with("grant_type=refresh_token&refresh_token=0.AX8A-refresh%2Ftoken%2B1&"),
        "{form}"
    );
    assert!(form.contains("&scope=https%3A%2F%2Foutlook.office.com%2FSMTP.Send+offline_access"));
    let bodies: Vec<String> = site
        .smarthost
        .delivered()
        .iter()
        .map(Delivered::data_str)
        .collect();
    assert!(
        bodies[0].contains("oauth-1") && bodies[1].contains("oauth-2"),
        "{bodies:?}"
    );
    drop(state);
    assert_eq!(
        site.auths(),
        [
            auth("XOAUTH2", "access-1", true),
            auth("XOAUTH2", "access-1", true)
        ]
    );
    relay.wait_log("OAuth2: new access token for site@example.com");
    assert_no_secrets(&relay, &["access-1"]);
}

#[test]
fn refused_cached_token_is_refreshed_once_and_a_rotated_refresh_token_is_saved() {
    let site = Site::start(true);
    let relay = site.relay();
    site.send(&relay, "bearer-1");
    site.wait_delivered(&relay, 1);
    {
        // The smarthost revokes the token; the endpoint's next grant rotates the refresh token.
        let mut state = site.state.lock().unwrap();
        state.valid_token = None;
        state.rotate_to = Some("refresh-2".to_owned());
    }
    site.send(&relay, "bearer-2");
    site.wait_delivered(&relay, 2);
    assert_eq!(
        site.auths(),
        [
            auth("OAUTHBEARER", "access-1", true),
            auth("OAUTHBEARER", "access-1", false),
            auth("OAUTHBEARER", "access-2", true),
        ],
        "OAUTHBEARER preferred; one refresh after the refusal"
    );
    assert_eq!(site.state.lock().unwrap().issued, 2);
    let saved = std::fs::read_to_string(site.dir.join("refresh-token")).unwrap();
    assert_eq!(
        saved, "refresh-2\n",
        "the rotated refresh token was not saved"
    );
    relay.wait_log("cached OAuth2 token refused");
    relay.wait_log("rotated the refresh token");
    assert_no_secrets(&relay, &["access-1", "access-2"]);
}

#[test]
fn token_endpoint_refusal_holds_the_mail_until_the_refresh_token_is_fixed() {
    let site = Site::start(false);
    // The refresh token in the file is not the one the endpoint knows: 400 invalid_grant.
    site.state.lock().unwrap().refresh_token = "revoked-by-the-admin".to_owned();
    let relay = site.relay();
    site.send(&relay, "held-1");
    let expected = format!(
        "OAuth2 token endpoint https://127.0.0.1:{}/token: HTTP status 400 (invalid_grant)",
        site.endpoint.port
    );
    let logged = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        relay.log().contains(&expected)
    });
    if !logged {
        relay.fail(&format!("no log line {expected:?}"));
    }
    assert!(site.auths().is_empty(), "AUTH without a token");
    assert!(site.smarthost.delivered().is_empty());
    let queue = relay.command_ok(&["queue", "list"]);
    assert!(queue.contains("ops@example.com"), "not held: {queue}");
    // The operator puts a good refresh token in the file: read at the next refresh, no restart.
    site.state.lock().unwrap().refresh_token = "fresh-consent".to_owned();
    std::fs::write(site.dir.join("refresh-token"), "fresh-consent\n").unwrap();
    relay.command_ok(&["queue", "flush"]);
    site.wait_delivered(&relay, 1);
    let log = relay.log();
    assert!(
        !log.contains("bounce") && !log.contains("Undelivered"),
        "{log}"
    );
    assert_no_secrets(
        &relay,
        &["access-1", "fresh-consent", "revoked-by-the-admin"],
    );
}

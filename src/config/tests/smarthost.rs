//! Tests of `[smarthost]` / `[[smarthost]]`: addresses, TLS policy, password and OAuth 2.0
//! credentials, the list's order and bound, and the `--smarthost` flag.

use super::super::effective::toml_str;
use super::super::file::ConfigFile;
use super::super::*;
use super::{from_text, keys, tls_dir, HASH};
use crate::smtp::client::TlsPolicy;

#[test]
fn smarthost_needs_a_port() {
    let problems = from_text("[smarthost]\naddress = \"mail.example.org\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["smarthost.address"]);
    assert!(from_text("[smarthost]\naddress = \"[::1]:25\"\n").is_ok());
    assert!(from_text("[smarthost]\naddress = \"mx:0\"\n").is_err());
}

#[test]
fn smarthost_tls_defaults_to_starttls() {
    let modes = [
        ("", TlsPolicy::StartTls),
        ("tls = \"starttls\"\n", TlsPolicy::StartTls),
        ("tls = \"tls\"\n", TlsPolicy::Implicit),
        ("tls = \"none\"\n", TlsPolicy::None),
    ];
    for (line, mode) in modes {
        let text = format!("[smarthost]\naddress = \"mx:25\"\n{line}");
        assert_eq!(from_text(&text).unwrap().smarthosts[0].tls, mode);
    }
    let problems = from_text("[smarthost]\naddress = \"mx:25\"\ntls = \"yes\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["smarthost.tls"]);
}

#[test]
fn tls_users_and_smarthost_auth_are_typed() {
    let (dir, tls) = tls_dir();
    let path = |name: &str| toml_str(&dir.path().join(name).display().to_string());
    let text = format!(
        "listen_tls = [\"127.0.0.1:465\"]\nrequire_tls = true\n{tls}\n\
         [[users]]\nname = \"camera\"\npassword_hash = \"{HASH}\"\n\
         [[users]]\nname = \"printer\"\npassword_hash = \"$6$rounds=10000$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRLr/TsVArtr91iR1\"\n\
         [smarthost]\naddress = \"smtp.example.com:465\"\ntls = \"tls\"\nca_file = {}\n\
         username = \"relay\"\npassword_file = {}\n",
        path("ca.pem"),
        path("password")
    );
    let c = from_text(&text).unwrap();
    assert_eq!(c.listen_tls, vec!["127.0.0.1:465".parse().unwrap()]);
    assert!(c.require_tls);
    assert_eq!(c.tls.as_ref().unwrap().cert, dir.path().join("cert.pem"));
    assert_eq!(c.users.len(), 2);
    assert_eq!(c.users[0].name, "camera");
    let smarthost = c.smarthosts[0].clone();
    assert_eq!(smarthost.tls, TlsPolicy::Implicit);
    let auth = smarthost.auth.unwrap();
    assert_eq!(auth.username, "relay");
    assert_eq!(
        auth.password.expose(),
        "secret-pw",
        "trailing newline stripped"
    );
    assert!(
        !format!("{c:?}").contains("secret-pw"),
        "Debug leaks the password"
    );
    assert!(!c.to_toml().contains("secret-pw"));
    assert_eq!(from_text(&c.to_toml()).unwrap(), c);
}

#[test]
fn smarthost_auth_needs_both_keys_and_tls() {
    let (dir, _) = tls_dir();
    let file = toml_str(&dir.path().join("password").display().to_string());
    let base = "[smarthost]\naddress = \"mx:587\"\n";
    let problems = from_text(&format!("{base}username = \"u\"\n")).unwrap_err();
    assert_eq!(keys(&problems), ["smarthost.password_file"]);
    let problems = from_text(&format!("{base}password_file = {file}\n")).unwrap_err();
    assert_eq!(keys(&problems), ["smarthost.username"]);
    let text = format!("{base}tls = \"none\"\nusername = \"u\"\npassword_file = {file}\n");
    let problems = from_text(&text).unwrap_err();
    assert_eq!(keys(&problems), ["smarthost.username"]);
    assert!(problems[0].message.contains("in clear"), "{}", problems[0]);
    let text = format!("{base}username = \"u\"\npassword_file = \"/nonexistent/pw\"\n");
    assert_eq!(
        keys(&from_text(&text).unwrap_err()),
        ["smarthost.password_file"]
    );
}

#[test]
fn smarthost_oauth2_is_typed_and_round_trips() {
    let (dir, _) = tls_dir();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("refresh"), "0.AX8A-refresh\n").unwrap();
    std::fs::write(path("secret"), "client-s3cret\n").unwrap();
    let text = format!(
        "[smarthost]\naddress = \"smtp.office365.com:587\"\nusername = \"site@example.com\"\n\
         oauth2_token_url = \"https://login.microsoftonline.com/common/oauth2/v2.0/token\"\n\
         oauth2_client_id = \"9e5f94bc\"\noauth2_client_secret_file = {}\n\
         oauth2_refresh_token_file = {}\n\
         oauth2_scope = \"https://outlook.office.com/SMTP.Send offline_access\"\n",
        toml_str(&path("secret")),
        toml_str(&path("refresh")),
    );
    let c = from_text(&text).unwrap();
    let smarthost = &c.smarthosts[0];
    assert_eq!(smarthost.auth, None);
    let oauth = smarthost.oauth2.as_ref().unwrap();
    assert_eq!(oauth.username, "site@example.com");
    assert_eq!(oauth.token_url.host, "login.microsoftonline.com");
    assert_eq!(oauth.client_id, "9e5f94bc");
    assert_eq!(
        oauth.client_secret.as_ref().unwrap().expose(),
        "client-s3cret"
    );
    assert_eq!(oauth.refresh_token_file, dir.path().join("refresh"));
    let shown = format!("{c:?}{}", c.to_toml());
    assert!(
        !shown.contains("s3cret") && !shown.contains("AX8A"),
        "{shown}"
    );
    assert_eq!(from_text(&c.to_toml()).unwrap(), c);
}

#[test]
fn smarthost_oauth2_problems_name_the_key() {
    let (dir, _) = tls_dir();
    let refresh = dir.path().join("refresh");
    std::fs::write(&refresh, "r\n").unwrap();
    let refresh = toml_str(&refresh.display().to_string());
    let pw = toml_str(&dir.path().join("password").display().to_string());
    let base = "[smarthost]\naddress = \"mx:587\"\n";
    let url = "oauth2_token_url = \"https://login.example/token\"\n";
    let full = format!(
        "{base}{url}username = \"u\"\noauth2_client_id = \"c\"\n\
         oauth2_refresh_token_file = {refresh}\n"
    );
    assert!(from_text(&full).is_ok());
    let cases = [
        (
            format!("{full}password_file = {pw}\n"),
            "smarthost.password_file",
        ),
        (
            format!("{full}tls = \"none\"\n"),
            "smarthost.oauth2_token_url",
        ),
        (
            full.replace("https://login", "http://login"),
            "smarthost.oauth2_token_url",
        ),
        (full.replace("username = \"u\"\n", ""), "smarthost.username"),
        (
            full.replace("oauth2_client_id = \"c\"\n", ""),
            "smarthost.oauth2_client_id",
        ),
        (
            full.replace(&refresh, "\"/nonexistent/refresh\""),
            "smarthost.oauth2_refresh_token_file",
        ),
        (
            format!("{base}username = \"u\"\noauth2_client_id = \"c\"\npassword_file = {pw}\n"),
            "smarthost.oauth2_client_id",
        ),
    ];
    for (text, key) in cases {
        let problems = from_text(&text).unwrap_err();
        assert_eq!(keys(&problems), [key], "{text}");
    }
}

#[test]
fn smarthost_flag_replaces_the_list_keeping_the_first_entrys_settings() {
    let mut file = ConfigFile::parse(
        "[[smarthost]]\naddress = \"a:25\"\ntls = \"none\"\n\
         [[smarthost]]\naddress = \"b:25\"\n",
    )
    .unwrap();
    let overrides = Overrides {
        smarthost: Some("mx.example:2525".into()),
        ..Overrides::default()
    };
    overrides.apply(&mut file);
    let c = Config::from_file(&file).unwrap();
    assert_eq!(c.smarthosts.len(), 1);
    assert_eq!(c.smarthosts[0].address, "mx.example:2525");
    assert_eq!(c.smarthosts[0].tls, TlsPolicy::None);
}

#[test]
fn smarthost_array_is_kept_in_order() {
    let c = from_text(
        "[[smarthost]]\naddress = \"fibre.example:587\"\n\
         [[smarthost]]\naddress = \"lte.example:465\"\ntls = \"tls\"\n\
         [[smarthost]]\naddress = \"[::1]:25\"\ntls = \"none\"\n",
    )
    .unwrap();
    let entries: Vec<_> = c
        .smarthosts
        .iter()
        .map(|s| (s.address.as_str(), s.tls))
        .collect();
    assert_eq!(
        entries,
        [
            ("fibre.example:587", TlsPolicy::StartTls),
            ("lte.example:465", TlsPolicy::Implicit),
            ("[::1]:25", TlsPolicy::None),
        ]
    );
    // An empty array holds mail, like no table at all.
    assert!(from_text("smarthost = []\n").unwrap().smarthosts.is_empty());
}

#[test]
fn smarthost_array_problems_name_the_entry() {
    let problems = from_text(
        "[[smarthost]]\naddress = \"a:25\"\n\
         [[smarthost]]\naddress = \"b\"\ntls = \"maybe\"\n\
         [[smarthost]]\nusername = \"u\"\n\
         [[smarthost]]\naddress = \"a:25\"\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&problems),
        [
            "smarthost[2].address",
            "smarthost[2].tls",
            "smarthost[3].address",
            "smarthost[3].password_file",
            "smarthost[4].address",
        ]
    );
    assert!(
        problems[4].message.contains("already smarthost[1]"),
        "{}",
        problems[4]
    );
    // The one-table form keeps its key without an index.
    let problems = from_text("[smarthost]\ntls = \"none\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["smarthost.address"]);
}

#[test]
fn too_many_smarthosts_is_a_problem() {
    let mut text = String::new();
    for n in 0..=MAX_SMARTHOSTS {
        text += &format!("[[smarthost]]\naddress = \"mx{n}.example:25\"\n");
    }
    let problems = from_text(&text).unwrap_err();
    assert_eq!(keys(&problems), ["smarthost"]);
}

#[test]
fn smarthost_from_is_one_address_per_entry_and_round_trips() {
    let text = "[[smarthost]]\naddress = \"a:25\"\nfrom = \"alerts@site.example\"\n\
                [[smarthost]]\naddress = \"b:25\"\n";
    let c = from_text(text).unwrap();
    assert_eq!(c.smarthosts[0].from.as_deref(), Some("alerts@site.example"));
    assert_eq!(c.smarthosts[1].from, None);
    let again = from_text(&c.to_toml()).unwrap();
    assert_eq!(again.smarthosts, c.smarthosts);
    for bad in [
        "root",
        "<alerts@site.example>",
        "Alerts <alerts@site.example>",
        "a b@site.example",
        "al\u{e9}rts@site.example",
        "postmaster",
        "",
    ] {
        let text = format!(
            "[smarthost]\naddress = \"a:25\"\nfrom = {}\n",
            toml_str(bad)
        );
        let problems = from_text(&text).unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.from"], "{bad:?}");
    }
}

//! `TokenUrl`: the `oauth2_token_url` key, parsed once when the config is loaded and used as is
//! by the OAuth client. Pure string handling: no I/O, and no knowledge of HTTP beyond the URL.

/// `oauth2_token_url`, split: only `https://host[:port]/path` is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUrl {
    /// Host as written (IPv6 without brackets): the TLS name and the `Host` header.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The URL as written in the config, for the effective config's TOML.
    text: String,
}

impl TokenUrl {
    /// Splits `url`; the error names what is wrong with it (the config reports it on its key).
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("https://") else {
            return Err(format!("{url:?} is not an https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: user information in the URL is not supported"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(format!("{url:?}: unclosed [ in the host"));
            };
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 443,
            Some(port) => port
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{url:?}: bad port {port:?}"))?,
        };
        let bad = |c: char| c.is_ascii_control() || c == ' ' || c == '#';
        if host.is_empty() || host.contains(bad) || path.contains(bad) {
            return Err(format!("{url:?}: no host, or spaces or control characters"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
            text: url.to_owned(),
        })
    }

    /// The URL as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `host:port` for connecting (brackets around IPv6) and for `tls::server_name`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `https://host[:port]/path` without the query: what log lines name.
    pub fn display(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        if self.port == 443 {
            format!("https://{}{path}", self.host)
        } else {
            format!("https://{}{path}", self.address())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_urls_are_https_only() {
        let url =
            TokenUrl::parse("https://login.microsoftonline.com/common/oauth2/v2.0/token").unwrap();
        assert_eq!(url.host, "login.microsoftonline.com");
        assert_eq!(url.port, 443);
        assert_eq!(url.path, "/common/oauth2/v2.0/token");
        assert_eq!(url.address(), "login.microsoftonline.com:443");
        let url = TokenUrl::parse("https://[::1]:8443?x=1").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 8443, "/?x=1")
        );
        assert_eq!(url.display(), "https://[::1]:8443/");
        for bad in [
            "http://login.example/token",
            "https://",
            "https://:443/x",
            "https://a:0/",
            "https://a:b/",
            "https://u:p@a/",
            "https://a/b c",
            "https://[::1/",
        ] {
            assert!(TokenUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_url_as_written_is_kept() {
        let url = TokenUrl::parse("https://[::1]:8443?x=1").unwrap();
        assert_eq!(url.as_str(), "https://[::1]:8443?x=1");
    }
}

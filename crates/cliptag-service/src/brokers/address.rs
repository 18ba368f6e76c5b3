//! Broker addresses: URLs checked before anything connects, so that a typo is an error
//! naming it at once rather than a connection that retries forever, and names checked
//! against what a subject or a topic may hold.

use url::Url;

use super::BrokerError;

/// Which broker a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Nats,
    Mqtt,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nats => "NATS",
            Kind::Mqtt => "MQTT",
        }
    }

    fn default_port(self, tls: bool) -> u16 {
        match (self, tls) {
            (Kind::Nats, _) => 4222,
            (Kind::Mqtt, false) => 1883,
            (Kind::Mqtt, true) => 8883,
        }
    }
}

/// A broker's address, checked.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    /// As given (for the NATS client, which reads credentials and TLS from it itself).
    pub raw: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl BrokerUrl {
    /// Parses a URL of `kind`: `nats://` or `tls://` for NATS; `mqtt://`, `tcp://`,
    /// `mqtts://` or `ssl://` for MQTT; a user and a password may be given in it.
    pub(crate) fn parse(kind: Kind, text: &str) -> Result<Self, BrokerError> {
        let bad = |reason: String| BrokerError::Url {
            broker: kind.name(),
            url: redact(text),
            reason,
        };
        let url = Url::parse(text.trim()).map_err(|e| bad(e.to_string()))?;
        let tls = match (kind, url.scheme()) {
            (Kind::Nats, "nats") | (Kind::Mqtt, "mqtt" | "tcp") => false,
            (Kind::Nats, "tls") | (Kind::Mqtt, "mqtts" | "ssl") => true,
            (Kind::Nats, other) => {
                return Err(bad(format!("scheme {other:?}: expected nats:// or tls://")));
            }
            (Kind::Mqtt, other) => {
                return Err(bad(format!(
                    "scheme {other:?}: expected mqtt://, mqtts://, tcp:// or ssl://"
                )));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "a broker URL has only a scheme, a user, a host and a port".into(),
            ));
        }
        // Percent-decoding only: a `+` in a password is a plus.
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        Ok(Self {
            raw: text.trim().to_string(),
            port: url.port().unwrap_or(kind.default_port(tls)),
            host,
            tls,
            username,
            password,
        })
    }

    /// The URL without its password, for logs, errors and `ListStreams`.
    pub(crate) fn redacted(&self) -> String {
        redact(&self.raw)
    }

    /// Scheme, host and port, without credentials (which clients take apart).
    pub(crate) fn address(&self) -> String {
        let scheme = self.raw.split("://").next().unwrap_or_default();
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `text` with the password of a URL's user replaced by `***`, and a user without a
/// password (a NATS token) too.
pub(crate) fn redact(text: &str) -> String {
    match Url::parse(text.trim()) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string().trim_end_matches('/').to_string()
        }
        Ok(mut url) if !url.username().is_empty() => {
            let _ = url.set_username("***");
            url.to_string().trim_end_matches('/').to_string()
        }
        Ok(_) => text.trim().to_string(),
        // Unparsable: hide whatever sits between "://" and "@".
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}***{}", &text[..start + 3], &text[at..])
            }
            _ => text.to_string(),
        },
    }
}

/// Checks that `name` can be one token of a NATS subject (no dots, wildcards or
/// blanks) and one level of an MQTT topic (no slashes, wildcards or NUL).
pub(crate) fn check_token(what: &str, name: &str) -> Result<(), BrokerError> {
    let bad = name.is_empty()
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '+' | '#')
        });
    if bad {
        return Err(BrokerError::Name(format!(
            "{what} {name:?} cannot be part of a subject or topic: it must be non-empty, \
             without blanks and without any of . * > / + #"
        )));
    }
    Ok(())
}

/// Checks a subject or topic prefix: tokens joined by `.` (NATS) or levels by `/`
/// (MQTT), each a valid token.
pub(crate) fn check_prefix(kind: Kind, prefix: &str) -> Result<(), BrokerError> {
    let separator = match kind {
        Kind::Nats => '.',
        Kind::Mqtt => '/',
    };
    for token in prefix.split(separator) {
        check_token(&format!("{} prefix {prefix:?}: part", kind.name()), token)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_each_broker_parse_with_their_defaults() {
        let u = BrokerUrl::parse(Kind::Nats, "nats://127.0.0.1").expect("nats");
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 4222, false));
        let u =
            BrokerUrl::parse(Kind::Nats, "tls://alice:s%40cret@nats.example:7422").expect("tls");
        assert_eq!((u.port, u.tls), (7422, true));
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.redacted(), "tls://alice:***@nats.example:7422");
        let u = BrokerUrl::parse(Kind::Mqtt, "mqtts://broker.example").expect("mqtts");
        assert_eq!((u.port, u.tls), (8883, true));
        let u = BrokerUrl::parse(Kind::Mqtt, "mqtt://[::1]:1884").expect("ipv6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        assert_eq!(u.address(), "mqtt://[::1]:1884");
        let u = BrokerUrl::parse(Kind::Mqtt, "mqtts://bob:a+b%2Bc@h").expect("plus");
        assert_eq!(u.password.as_deref(), Some("a+b+c"));
        assert_eq!(u.address(), "mqtts://h:8883");
        let u = BrokerUrl::parse(Kind::Nats, "nats://s3cr3t-token@h:4222").expect("token");
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("s3cr3t-token"), None)
        );
        assert_eq!(u.redacted(), "nats://***@h:4222");
    }

    #[test]
    fn malformed_urls_name_the_url_and_hide_the_password() {
        for (kind, text, why) in [
            (Kind::Nats, "nats//localhost", "relative URL"),
            (Kind::Nats, "mqtt://localhost", "expected nats://"),
            (Kind::Mqtt, "nats://localhost", "expected mqtt://"),
            (Kind::Mqtt, "mqtt://localhost:99999", "invalid port"),
            (Kind::Mqtt, "mqtt://u:pw@host/topic", "only a scheme"),
        ] {
            let e = BrokerUrl::parse(kind, text).expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        assert_eq!(redact("nats://u:pw@h:99999"), "nats://***@h:99999");
    }

    #[test]
    fn names_that_would_change_a_subject_are_refused() {
        check_token("stream", "cam-1_north").expect("plain");
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a+", "a#"] {
            assert!(check_token("stream", bad).is_err(), "{bad:?}");
        }
        check_prefix(Kind::Nats, "site.cliptag").expect("dotted");
        check_prefix(Kind::Mqtt, "site/cliptag").expect("levels");
        assert!(check_prefix(Kind::Nats, "site..cliptag").is_err());
        assert!(check_prefix(Kind::Mqtt, "site/#").is_err());
    }
}

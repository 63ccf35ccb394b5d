//! Which origin serves what. In host routing every instance has an origin of its own,
//! `https://<id>.<public host>[:port]`, so the browser keeps one instance's pages away from
//! another's; the public host serves the API and hands instance URLs over to their origins.
//! In path routing everything shares the public host's origin (one trust domain). Pure: the
//! server asks [`Origins::site`] which site a request's host names, and builds instance URLs
//! with [`Origins::instance_base`].

/// How instances are reached, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoutingMode {
    /// Host routing when the public host is `localhost` (browsers resolve `*.localhost` to
    /// loopback by themselves), else path routing.
    Auto,
    /// Each instance at `https://<id>.<public host>`: needs wildcard DNS (and a wildcard
    /// certificate, or the local CA to mint one per instance host).
    Host,
    /// Every instance under the public host: one trust domain, for users who trust each other.
    Path,
}

/// The site a request's host names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site<'a> {
    /// Path routing: the public host serves the API and every instance.
    Shared,
    /// Host routing, the public host (or any host that is not an instance's): the API, and
    /// instance paths handed over to their own origins.
    Front,
    /// Host routing, an instance's own host: that instance only.
    Instance(&'a str),
}

#[derive(Debug, Clone)]
pub struct Origins {
    host_routing: bool,
    /// `https://host[:port]`, no trailing slash.
    public_url: String,
    /// The public host, lowercase, without port or brackets.
    host: String,
    /// `:port` as written in the public URL, or empty.
    port: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("--public-url {0:?} must look like https://host[:port]")]
    PublicUrl(String),
    #[error(
        "--routing host gives each instance the host <id>.{0}, which needs a DNS name, not an \
         IP address: set --public-url to a name with wildcard DNS, or use --routing path"
    )]
    NoName(String),
}

impl Origins {
    pub fn new(public_url: &str, mode: RoutingMode) -> Result<Self, OriginError> {
        let url = public_url.trim_end_matches('/');
        let authority = url
            .strip_prefix("https://")
            .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@']))
            .ok_or_else(|| OriginError::PublicUrl(url.to_owned()))?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => {
                (h, &authority[h.len()..])
            }
            _ => (authority, ""),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(OriginError::PublicUrl(url.to_owned()));
        }
        let is_name = host.parse::<std::net::IpAddr>().is_err();
        let host_routing = match mode {
            RoutingMode::Host if !is_name => return Err(OriginError::NoName(host)),
            RoutingMode::Host => true,
            RoutingMode::Path => false,
            RoutingMode::Auto => host == "localhost",
        };
        Ok(Self {
            host_routing,
            public_url: url.to_owned(),
            port: port.to_owned(),
            host,
        })
    }

    pub fn host_routing(&self) -> bool {
        self.host_routing
    }

    /// `https://host[:port]` of the public host.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The public host, lowercase, without port.
    pub fn public_host(&self) -> &str {
        &self.host
    }

    /// The origin an instance is served from: its own in host routing, else the public one.
    pub fn instance_base(&self, id: &str) -> String {
        if self.host_routing {
            format!("https://{id}.{}{}", self.host, self.port)
        } else {
            self.public_url.clone()
        }
    }

    /// The instance an SNI name or host (without port) belongs to, in host routing.
    pub fn instance_of_name<'a>(&self, name: &'a str) -> Option<&'a str> {
        if !self.host_routing {
            return None;
        }
        let label = name
            .len()
            .checked_sub(self.host.len() + 1)
            .filter(|&n| n > 0)
            .and_then(|n| {
                let (label, rest) = name.split_at(n);
                (rest.as_bytes()[0] == b'.' && rest[1..].eq_ignore_ascii_case(&self.host))
                    .then_some(label)
            })?;
        let id_chars = label
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        (id_chars && label.len() <= 63).then_some(label)
    }

    /// The site a request's `Host` (or HTTP/2 authority) names.
    pub fn site<'a>(&self, host: Option<&'a str>) -> Site<'a> {
        if !self.host_routing {
            return Site::Shared;
        }
        let Some(host) = host else {
            return Site::Front;
        };
        let name = match host.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        self.instance_of_name(name)
            .map_or(Site::Front, Site::Instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_host_routing_on_localhost_only() {
        let o = Origins::new("https://localhost:8443/", RoutingMode::Auto).unwrap();
        assert!(o.host_routing());
        assert_eq!(
            o.instance_base("u-0000000a"),
            "https://u-0000000a.localhost:8443"
        );
        assert_eq!(o.public_url(), "https://localhost:8443");
        let p = Origins::new("https://vscode.local", RoutingMode::Auto).unwrap();
        assert!(!p.host_routing());
        assert_eq!(p.instance_base("u-0000000a"), "https://vscode.local");
        assert_eq!(p.site(Some("u-0000000a.vscode.local")), Site::Shared);
        let h = Origins::new("https://VSCode.example.com", RoutingMode::Host).unwrap();
        assert_eq!(h.instance_base("a-1"), "https://a-1.vscode.example.com");
    }

    #[test]
    fn host_routing_needs_a_name() {
        assert_eq!(
            Origins::new("https://127.0.0.1:8443", RoutingMode::Host).unwrap_err(),
            OriginError::NoName("127.0.0.1".into())
        );
        assert!(!Origins::new("https://[::1]:8443", RoutingMode::Auto)
            .unwrap()
            .host_routing());
        for bad in ["http://x", "https://", "https://a/b", "https://u@h"] {
            assert!(Origins::new(bad, RoutingMode::Auto).is_err(), "{bad}");
        }
    }

    #[test]
    fn sites_by_host() {
        let o = Origins::new("https://localhost:8443", RoutingMode::Auto).unwrap();
        assert_eq!(o.site(Some("localhost:8443")), Site::Front);
        assert_eq!(o.site(None), Site::Front);
        assert_eq!(o.site(Some("127.0.0.1:8443")), Site::Front);
        assert_eq!(
            o.site(Some("u-0000000a.localhost:8443")),
            Site::Instance("u-0000000a")
        );
        assert_eq!(
            o.site(Some("u-0000000a.LOCALHOST")),
            Site::Instance("u-0000000a")
        );
        for front in [
            "a.b.localhost:8443",
            ".localhost",
            "U-1.localhost",
            "u_1.localhost",
            "xlocalhost",
            "u-1.localhost.evil",
        ] {
            assert_eq!(o.site(Some(front)), Site::Front, "{front}");
        }
        assert_eq!(o.instance_of_name("u-1.localhost"), Some("u-1"));
        assert_eq!(o.instance_of_name("localhost"), None);
    }
}

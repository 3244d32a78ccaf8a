//! The outbound allow-list of one plugin, checked on resolved addresses.
//!
//! Rules (`runtime.limits.outbound_allow`, per plugin in `runtime.plugins.<name>`):
//! `"*"` any address; a CIDR or IP (`"10.0.0.0/8"`, `"127.0.0.1"`, `"::1"`); a host name with an
//! optional port (`"opensearch.svc:9200"`, `"*.example.com"`). Link-local addresses (which hold
//! cloud metadata services) and known metadata addresses are refused unless a CIDR/IP rule
//! names them explicitly; neither `"*"` nor a host-name rule lets a name resolve to them.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One allow rule.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Any,
    Net(IpNet),
    Host { name: String, wildcard: bool, port: Option<u16> },
}

/// Addresses refused unless explicitly listed by a CIDR/IP rule.
const SENSITIVE: &[&str] = &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"];

/// A plugin's outbound policy.
#[derive(Debug, Clone)]
pub struct Policy {
    plugin: String,
    rules: Vec<Rule>,
    sensitive: Vec<IpNet>,
}

/// A refused destination; the message says which rule to add.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Policy {
    /// Parse `rules` for plugin `plugin`; an unparseable rule is an error naming it.
    pub fn parse(plugin: &str, rules: &[String]) -> Result<Policy, String> {
        let mut out = Vec::new();
        for r in rules {
            let r = r.trim();
            let rule = if r == "*" {
                Rule::Any
            } else if let Ok(net) = r.parse::<IpNet>() {
                Rule::Net(net)
            } else if let Ok(ip) = r.trim_matches(['[', ']']).parse::<IpAddr>() {
                Rule::Net(IpNet::from(ip))
            } else {
                let (host, port) = match r.rsplit_once(':') {
                    Some((h, p)) => {
                        (h, Some(p.parse::<u16>().map_err(|_| format!("outbound rule {r:?}: bad port {p:?}"))?))
                    }
                    None => (r, None),
                };
                let (wildcard, name) = match host.strip_prefix("*.") {
                    Some(rest) => (true, rest),
                    None => (false, host),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                    return Err(format!(
                        "outbound rule {r:?} is not \"*\", an IP or CIDR, or a host name with an optional port"
                    ));
                }
                Rule::Host { name: name.to_ascii_lowercase(), wildcard, port }
            };
            out.push(rule);
        }
        let sensitive = SENSITIVE.iter().map(|s| s.parse().expect("valid CIDR")).collect();
        Ok(Policy { plugin: plugin.to_string(), rules: out, sensitive })
    }

    fn host_rule_matches(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        self.rules.iter().any(|r| match r {
            Rule::Host { name, wildcard, port: p } => {
                let name_ok = if *wildcard { host.ends_with(&format!(".{name}")) } else { host == *name };
                name_ok && (p.is_none() || port.is_none() || *p == port)
            }
            _ => false,
        })
    }

    /// Whether `ip`, reached as `host`, is allowed. `host` is the URL's host name
    /// (for IP-literal URLs, the IP itself).
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        let listed = self.rules.iter().any(|r| matches!(r, Rule::Net(n) if n.contains(&ip)));
        if self.sensitive.iter().any(|n| n.contains(&ip)) {
            return listed;
        }
        listed || self.rules.contains(&Rule::Any) || self.host_rule_matches(host, None)
    }

    /// The check before a request: host names are checked here for their port and
    /// again, on every resolved address, by the resolver; IP literals are checked fully.
    pub fn check_url(&self, host: &url::Host<&str>, port: u16) -> Result<(), Denied> {
        let ip = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
            url::Host::Domain(_) => None,
        };
        let shown = host.to_string();
        match ip {
            Some(ip) if self.allows(&shown, ip) => Ok(()),
            Some(ip) => Err(self.denied(&shown, &[ip])),
            None => {
                let name_may_pass = self.rules.iter().any(|r| matches!(r, Rule::Any | Rule::Net(_)))
                    || self.host_rule_matches(&shown, Some(port));
                if name_may_pass { Ok(()) } else { Err(self.denied(&format!("{shown}:{port}"), &[])) }
            }
        }
    }

    fn denied(&self, what: &str, ips: &[IpAddr]) -> Denied {
        let resolved = if ips.is_empty() {
            String::new()
        } else {
            format!(" (resolves to {})", ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
        };
        Denied(format!(
            "{what}{resolved} is not in the outbound allow-list of plugin `{}`; an operator may add it to \
             runtime.plugins.{}.outbound_allow (link-local and metadata addresses need an explicit CIDR)",
            self.plugin, self.plugin
        ))
    }
}

/// Fixed addresses for host names (`http.hosts`), consulted before DNS.
pub type StaticHosts = Arc<std::collections::BTreeMap<String, Vec<IpAddr>>>;

/// A DNS resolver that hands the HTTP client only the addresses the policy allows, so the
/// connection goes exactly where the check said (no rebinding between check and connect).
pub struct PolicyResolver {
    /// What the plugin may reach.
    pub policy: Arc<Policy>,
    /// Names answered without DNS.
    pub hosts: StaticHosts,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, hosts) = (self.policy.clone(), self.hosts.clone());
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = match hosts.get(&host.to_ascii_lowercase()) {
                Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| policy.allows(&host, a.ip())).collect();
            if allowed.is_empty() {
                let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
                return Err(Box::new(policy.denied(&host, &ips)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        Policy::parse("p", &rules.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn any_allows_everything_but_link_local_and_metadata() {
        let p = policy(&["*"]);
        assert!(p.allows("os", ip("10.1.2.3")));
        assert!(p.allows("os", ip("203.0.113.9")));
        assert!(!p.allows("metadata", ip("169.254.169.254")));
        assert!(!p.allows("x", ip("fe80::1")));
        assert!(!p.allows("x", ip("100.100.100.200")));
        assert!(policy(&["*", "169.254.169.254/32"]).allows("metadata", ip("169.254.169.254")));
    }

    #[test]
    fn cidr_and_host_rules() {
        let p = policy(&["10.0.0.0/8", "::1", "opensearch.svc:9200", "*.corp.example"]);
        assert!(p.allows("a", ip("10.9.9.9")));
        assert!(!p.allows("a", ip("11.0.0.1")));
        assert!(p.allows("a", ip("::1")));
        assert!(p.allows("opensearch.svc", ip("203.0.113.1")), "a listed name may resolve anywhere public");
        assert!(!p.allows("opensearch.svc", ip("169.254.169.254")), "but never to metadata");
        assert!(p.allows("db.corp.example", ip("192.0.2.1")));
        assert!(!p.allows("corp.example.evil", ip("192.0.2.1")));
        let svc = url::Host::Domain("opensearch.svc");
        assert!(p.check_url(&svc, 9200).is_ok());
        let only_names = policy(&["opensearch.svc:9200"]);
        let err = only_names.check_url(&svc, 9300).unwrap_err().to_string();
        assert!(err.contains("opensearch.svc:9300") && err.contains("runtime.plugins.p.outbound_allow"), "{err}");
        assert!(only_names.check_url(&url::Host::Ipv4("169.254.169.254".parse().unwrap()), 80).is_err());
    }

    #[test]
    fn bad_rules_are_named() {
        let err = Policy::parse("p", &["os:http".into()]).unwrap_err();
        assert!(err.contains("os:http"), "{err}");
        assert!(Policy::parse("p", &["a b".into()]).unwrap_err().contains("\"a b\""));
    }
}

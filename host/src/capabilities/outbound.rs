//! The outbound allow-list of one plugin, checked on resolved addresses.
//!
//! Rules (`runtime.limits.outbound_allow`, per plugin in `runtime.plugins.<file stem>`):
//! `"*"` any public or private address; a CIDR or IP (`"10.0.0.0/8"`, `"127.0.0.1"`, `"::1"`); a
//! host name with an optional port (`"opensearch.svc:9200"`, `"*.example.com"`).
//!
//! Sensitive addresses (loopback, unspecified, link-local, which holds cloud metadata services,
//! and known metadata addresses) are refused unless a CIDR/IP rule names them explicitly; neither
//! `"*"` nor a host-name rule lets a name resolve to them. The host's own listeners (public and
//! admin, on any of its addresses) are refused always, whatever the rules. Addresses are
//! canonicalised first: an IPv4 address written as IPv6 (`::ffff:127.0.0.1`, `::127.0.0.1`,
//! `64:ff9b::7f00:1`) is judged as the IPv4 address it carries.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

tokio::task_local! {
    /// The port of the request being resolved: the resolver sees only a name, and the host's
    /// own listeners are refused by (address, port).
    pub static TARGET_PORT: u16;
}

/// The host's own listeners, registered once they are bound (shared by every plugin's policy).
#[derive(Debug, Default)]
pub struct OwnListeners(RwLock<Vec<(SocketAddr, &'static str)>>);

impl OwnListeners {
    /// Refuse `addr` (named `what`, e.g. "admin") to every plugin from now on.
    pub fn add(&self, addr: SocketAddr, what: &'static str) {
        self.0.write().unwrap().push((SocketAddr::new(canonical(addr.ip()), addr.port()), what));
    }

    /// Which listener `ip:port` reaches, if any. `port` unknown: any listener port matches.
    /// Connecting to the unspecified address reaches this machine (Linux treats it as
    /// loopback), so it counts as every local address.
    fn reached(&self, ip: IpAddr, port: Option<u16>) -> Option<(SocketAddr, &'static str)> {
        let this_machine = ip.is_unspecified() || ip.is_loopback();
        self.0.read().unwrap().iter().copied().find(|(l, _)| {
            port.is_none_or(|p| p == l.port())
                && (l.ip() == ip
                    || (this_machine && l.ip().is_loopback())
                    || (l.ip().is_unspecified() && (this_machine || is_local(ip))))
        })
    }
}

/// Whether `ip` is one of this machine's own addresses (binding to it succeeds only then).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The address as it will be reached: IPv4 carried in IPv6 (mapped, compatible, NAT64) unwrapped.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = || IpAddr::V4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks); not :: or ::1.
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return embedded();
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return embedded();
    }
    ip
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Any,
    Net(IpNet),
    Host { name: String, wildcard: bool, port: Option<u16> },
}

/// Addresses refused unless explicitly listed by a CIDR/IP rule: loopback, unspecified
/// ("this network"), link-local and cloud metadata.
const SENSITIVE: &[(&str, &str)] = &[
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("100.100.100.200/32", "cloud metadata"),
];

/// A plugin's outbound policy.
#[derive(Debug, Clone)]
pub struct Policy {
    plugin: String,
    rules: Vec<Rule>,
    sensitive: Vec<(IpNet, &'static str)>,
    own: Arc<OwnListeners>,
}

/// A refused destination; the message says which rule to add.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Policy {
    /// Parse `rules` for plugin `plugin` (its file stem, as the operator names it in config);
    /// an unparseable rule is an error naming it. `own` are the host's listeners, always refused.
    pub fn parse(plugin: &str, rules: &[String], own: Arc<OwnListeners>) -> Result<Policy, String> {
        let mut out = Vec::new();
        for r in rules {
            let r = r.trim();
            let rule = if r == "*" {
                Rule::Any
            } else if let Ok(net) = r.parse::<IpNet>() {
                Rule::Net(net.trunc())
            } else if let Ok(ip) = r.trim_matches(['[', ']']).parse::<IpAddr>() {
                Rule::Net(IpNet::from(canonical(ip)))
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
        let sensitive = SENSITIVE.iter().map(|(net, what)| (net.parse().expect("valid CIDR"), *what)).collect();
        Ok(Policy { plugin: plugin.to_string(), rules: out, sensitive, own })
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

    /// Whether `ip`, reached as `host` on `port` (`None`: not known), is allowed. `host` is the
    /// URL's host name (for IP-literal URLs, the IP itself).
    pub fn allows(&self, host: &str, ip: IpAddr, port: Option<u16>) -> bool {
        self.judge(host, ip, port).is_ok()
    }

    /// `Ok`, or why `ip` is refused.
    fn judge(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if let Some((addr, what)) = self.own.reached(ip, port) {
            return Err(Refusal::Own(addr, what));
        }
        let listed = self.rules.iter().any(|r| matches!(r, Rule::Net(n) if n.contains(&ip)));
        if let Some((range, what)) = self.sensitive.iter().find(|(n, _)| n.contains(&ip)) {
            // Only a rule as narrow as the sensitive range names it: "0.0.0.0/0" written to mean
            // "anything" does not open loopback or metadata.
            let named = self
                .rules
                .iter()
                .any(|r| matches!(r, Rule::Net(n) if n.contains(&ip) && n.prefix_len() >= range.prefix_len()));
            return if named { Ok(()) } else { Err(Refusal::Sensitive(what)) };
        }
        if listed || self.rules.contains(&Rule::Any) || self.host_rule_matches(host, None) {
            Ok(())
        } else {
            Err(Refusal::NotListed)
        }
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
            Some(ip) => self.judge(&shown, ip, Some(port)).map_err(|why| self.denied(&shown, &[(ip, why)])),
            None => {
                let name_may_pass = self.rules.iter().any(|r| matches!(r, Rule::Any | Rule::Net(_)))
                    || self.host_rule_matches(&shown, Some(port));
                if name_may_pass { Ok(()) } else { Err(self.denied(&format!("{shown}:{port}"), &[])) }
            }
        }
    }

    /// The refusal of `what`, with each refused address and why; it names the rule to add, or
    /// says that none can help (the host's own listeners).
    fn denied(&self, what: &str, refused: &[(IpAddr, Refusal)]) -> Denied {
        let p = &self.plugin;
        if let Some((_, Refusal::Own(addr, listener))) = refused.iter().find(|(_, r)| matches!(r, Refusal::Own(..))) {
            return Denied(format!(
                "{what} reaches this host's own {listener} listener ({addr}); no plugin may send requests to it, \
                 whatever runtime.plugins.{p}.outbound_allow says"
            ));
        }
        let literal = refused.len() == 1 && what.trim_matches(['[', ']']) == refused[0].0.to_string();
        let resolved = if refused.is_empty() || literal {
            String::new()
        } else {
            let ips: Vec<String> = refused.iter().map(|(i, _)| i.to_string()).collect();
            format!(" (resolves to {})", ips.join(", "))
        };
        let sensitive = refused.iter().find_map(|(ip, r)| match r {
            Refusal::Sensitive(kind) => Some((canonical(*ip), *kind)),
            _ => None,
        });
        Denied(match sensitive {
            Some((ip, kind)) => format!(
                "{what}{resolved} is a {kind} address, which plugin `{p}` may reach only if the operator names it: \
                 add \"{ip}\" (or its CIDR) to runtime.plugins.{p}.outbound_allow"
            ),
            None => format!(
                "{what}{resolved} is not in the outbound allow-list of plugin `{p}`; an operator may add it to \
                 runtime.plugins.{p}.outbound_allow"
            ),
        })
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// One of the host's own listeners.
    Own(SocketAddr, &'static str),
    /// Loopback, unspecified, link-local or metadata, not named by an IP/CIDR rule.
    Sensitive(&'static str),
    /// No rule admits it.
    NotListed,
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
        // Read now, in the request's task (the future below may finish in another one). Unknown
        // (never, as `PluginHttp::send` sets it): every listener port counts.
        let port = TARGET_PORT.try_with(|p| *p).ok();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = match hosts.get(&host.to_ascii_lowercase()) {
                Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let mut allowed = Vec::new();
            let mut refused = Vec::new();
            for a in addrs {
                match policy.judge(&host, a.ip(), port) {
                    // Judged as its canonical address, reached as resolved (NAT64 needs the IPv6 one).
                    Ok(()) => allowed.push(a),
                    Err(why) => refused.push((a.ip(), why)),
                }
            }
            // The client connects only to allowed addresses; but a name that also points at
            // this host's own listener is refused whole, and says so.
            let own = refused.iter().any(|(_, r)| matches!(r, Refusal::Own(..)));
            if allowed.is_empty() || own {
                let shown = match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                };
                return Err(Box::new(policy.denied(&shown, &refused)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_with(rules: &[&str], own: Arc<OwnListeners>) -> Policy {
        Policy::parse("p", &rules.iter().map(|s| s.to_string()).collect::<Vec<_>>(), own).unwrap()
    }

    fn policy(rules: &[&str]) -> Policy {
        policy_with(rules, Arc::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn any_allows_public_and_private_but_not_sensitive_addresses() {
        let p = policy(&["*"]);
        assert!(p.allows("os", ip("10.1.2.3"), None), "a cluster's OpenSearch lives on private addresses");
        assert!(p.allows("os", ip("203.0.113.9"), None));
        for refused in
            ["169.254.169.254", "fe80::1", "100.100.100.200", "127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::"]
        {
            assert!(!p.allows("x", ip(refused), Some(80)), "{refused} must need an explicit rule");
        }
        assert!(policy(&["*", "169.254.169.254/32"]).allows("metadata", ip("169.254.169.254"), None));
        assert!(policy(&["*", "127.0.0.1"]).allows("localhost", ip("127.0.0.1"), None));
        assert!(!policy(&["*", "127.0.0.1"]).allows("localhost", ip("127.0.0.2"), None));
        // A catch-all CIDR is not a name for a sensitive range: only a rule as narrow does.
        let catch_all = policy(&["0.0.0.0/0", "::/0"]);
        for refused in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0"] {
            assert!(!catch_all.allows("x", ip(refused), None), "{refused} under a catch-all CIDR");
        }
        assert!(catch_all.allows("x", ip("10.0.0.1"), None));
        assert!(policy(&["127.0.0.0/8"]).allows("x", ip("127.0.0.9"), None));
    }

    #[test]
    fn ipv4_in_ipv6_clothing_is_judged_as_ipv4() {
        let p = policy(&["*"]);
        for disguised in ["::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "::ffff:169.254.169.254"] {
            assert!(!p.allows("x", ip(disguised), None), "{disguised}");
            let host = url::Host::<&str>::Ipv6(disguised.parse().unwrap());
            let err = p.check_url(&host, 80).unwrap_err().to_string();
            assert!(err.contains("outbound_allow"), "{err}");
        }
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("::1")), ip("::1"), "IPv6 loopback stays itself");
        assert!(policy(&["127.0.0.1"]).allows("x", ip("::ffff:127.0.0.1"), None), "a rule matches either spelling");
        assert!(policy(&["::ffff:127.0.0.1"]).allows("x", ip("127.0.0.1"), None));
    }

    #[test]
    fn the_hosts_own_listeners_are_refused_whatever_the_rules() {
        let own = Arc::new(OwnListeners::default());
        own.add("127.0.0.1:6781".parse().unwrap(), "admin");
        own.add("0.0.0.0:6780".parse().unwrap(), "public");
        let p = policy_with(&["*", "127.0.0.0/8", "::1"], own);
        assert!(p.allows("os", ip("127.0.0.1"), Some(9200)), "other loopback ports stay reachable when allowed");
        assert!(!p.allows("x", ip("127.0.0.1"), Some(6781)));
        assert!(!p.allows("x", ip("::ffff:127.0.0.1"), Some(6781)));
        assert!(!p.allows("x", ip("127.0.0.1"), Some(6780)), "a wildcard listener is reachable on loopback");
        assert!(!p.allows("x", ip("127.0.0.5"), Some(6780)));
        assert!(!p.allows("x", ip("127.0.0.1"), None), "an unknown port counts as a listener's");
        assert!(p.allows("x", ip("203.0.113.1"), Some(6780)), "another machine's port 6780 is not ours");
        // Connecting to 0.0.0.0 reaches this machine: never a way round, even where it is named.
        let open = policy_with(&["*", "0.0.0.0/8", "127.0.0.0/8"], p.own.clone());
        assert!(!open.allows("x", ip("0.0.0.0"), Some(6781)));
        assert!(!open.allows("x", ip("::ffff:0.0.0.0"), Some(6781)));
        assert!(!open.allows("x", ip("::"), Some(6780)));
        let err = p.check_url(&url::Host::Ipv4("127.0.0.1".parse().unwrap()), 6781).unwrap_err().to_string();
        assert!(err.contains("own admin listener") && err.contains("no plugin may"), "{err}");
    }

    #[test]
    fn cidr_and_host_rules() {
        let p = policy(&["10.0.0.0/8", "::1", "opensearch.svc:9200", "*.corp.example"]);
        assert!(p.allows("a", ip("10.9.9.9"), None));
        assert!(!p.allows("a", ip("11.0.0.1"), None));
        assert!(p.allows("a", ip("::1"), None));
        assert!(p.allows("opensearch.svc", ip("203.0.113.1"), None), "a listed name may resolve anywhere public");
        assert!(!p.allows("opensearch.svc", ip("169.254.169.254"), None), "but never to metadata");
        assert!(!p.allows("opensearch.svc", ip("127.0.0.1"), None), "nor to loopback");
        assert!(p.allows("db.corp.example", ip("192.0.2.1"), None));
        assert!(!p.allows("corp.example.evil", ip("192.0.2.1"), None));
        let svc = url::Host::Domain("opensearch.svc");
        assert!(p.check_url(&svc, 9200).is_ok());
        let only_names = policy(&["opensearch.svc:9200"]);
        let err = only_names.check_url(&svc, 9300).unwrap_err().to_string();
        assert!(err.contains("opensearch.svc:9300") && err.contains("runtime.plugins.p.outbound_allow"), "{err}");
        let err = only_names.check_url(&url::Host::Ipv4("169.254.169.254".parse().unwrap()), 80).unwrap_err();
        assert!(err.to_string().contains("add \"169.254.169.254\""), "{err}");
    }

    #[test]
    fn bad_rules_are_named() {
        let err = Policy::parse("p", &["os:http".into()], Arc::default()).unwrap_err();
        assert!(err.contains("os:http"), "{err}");
        assert!(Policy::parse("p", &["a b".into()], Arc::default()).unwrap_err().contains("\"a b\""));
    }
}

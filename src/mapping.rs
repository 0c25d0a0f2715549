//! Local names and the mail domain: what `root` becomes before a message is queued.
//!
//! Applied once, at intake, to every message whatever door it came in by (SMTP, `sendmail`,
//! a DSN), so the smarthost only ever sees qualified addresses:
//! - an address without a domain is qualified with `domain` (`root` → `root@site.example`);
//! - a recipient at a local domain (`localhost`, the host's names, `domain`) is looked up in the
//!   aliases; one without an alias goes to `admin` when it is set (nullmailer's `adminaddr`),
//!   else stays as qualified;
//! - a sender at a local domain is rewritten to `domain` (a smarthost that refuses unqualified
//!   names refuses `root@raspberrypi` as much as `root`).
//!
//! Pure: the domain discovery's file reads are in [`discover_domain`], given the file contents.

use crate::aliases::{Aliases, MAX_ALIAS_DEPTH};

/// How local names map to addresses. Built once from the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressMap {
    /// Qualifies bare names; lower case.
    domain: String,
    /// Domains whose recipients are local (lower case): `localhost`, the host's names, `domain`.
    local_domains: Vec<String>,
    aliases: Aliases,
    /// Where a local name without an alias goes, if set.
    admin: Option<String>,
}

impl AddressMap {
    /// `host_names` are the host's own names (the configured `hostname`, the kernel's); they,
    /// `localhost` and `domain` make an address local.
    pub fn new(domain: &str, host_names: &[&str], aliases: Aliases, admin: Option<String>) -> Self {
        let domain = domain.to_ascii_lowercase();
        let mut local_domains = vec!["localhost".to_owned(), "localhost.localdomain".to_owned()];
        for name in host_names.iter().copied().chain([domain.as_str()]) {
            let name = name.to_ascii_lowercase();
            if !name.is_empty() && !local_domains.contains(&name) {
                local_domains.push(name);
            }
        }
        Self {
            domain,
            local_domains,
            aliases,
            admin,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn admin(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    /// True if `address` (qualified or not) is one of ours.
    pub fn is_local(&self, address: &str) -> bool {
        match address.rsplit_once('@') {
            None => true,
            Some((_, domain)) => self.is_local_domain(domain),
        }
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.local_domains.contains(&domain)
    }

    /// The envelope sender as it goes upstream: the null sender stays null, a bare name or a
    /// name at a local domain becomes `name@domain`.
    pub fn sender(&self, sender: &str) -> String {
        if sender.is_empty() {
            return String::new();
        }
        match sender.rsplit_once('@') {
            None => format!("{sender}@{}", self.domain),
            Some((local, domain)) if self.is_local_domain(domain) => {
                format!("{local}@{}", self.domain)
            }
            Some(_) => sender.to_owned(),
        }
    }

    /// Where `recipients` go after qualification, aliases and `admin`, in order, without
    /// duplicates (compared case-insensitively).
    pub fn recipients<S: AsRef<str>>(&self, recipients: &[S]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(recipients.len());
        for rcpt in recipients {
            self.expand(rcpt.as_ref(), 0, &mut Vec::new(), &mut out);
        }
        out
    }

    /// One recipient's addresses, each with the step that produced it (for `sendmail -bv`).
    pub fn explain(&self, recipient: &str) -> Vec<(String, Via)> {
        let mut out = Vec::new();
        self.walk(recipient, 0, &mut Vec::new(), &mut |address, route| {
            out.push((address, route));
        });
        out
    }

    fn expand(&self, rcpt: &str, depth: usize, chain: &mut Vec<String>, out: &mut Vec<String>) {
        self.walk(rcpt, depth, chain, &mut |address, _| {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&address)) {
                out.push(address);
            }
        });
    }

    /// Expands `rcpt`, calling `emit` for each final address. `chain` holds the aliases being
    /// expanded: a name that reaches itself is delivered as itself (aliases(5)), not looped.
    fn walk(
        &self,
        rcpt: &str,
        depth: usize,
        chain: &mut Vec<String>,
        emit: &mut dyn FnMut(String, Via),
    ) {
        let (local, domain) = match rcpt.rsplit_once('@') {
            Some((local, domain)) => (local, Some(domain)),
            None => (rcpt, None),
        };
        if domain.is_some_and(|d| !self.is_local_domain(d)) {
            emit(rcpt.to_owned(), Via::Remote);
            return;
        }
        let key = local.to_ascii_lowercase();
        let looped = chain.contains(&key);
        match self.aliases.get(local) {
            Some(targets) if !looped && depth < MAX_ALIAS_DEPTH => {
                chain.push(key);
                for target in targets {
                    self.walk(target, depth + 1, chain, &mut |address, via| {
                        let via = if via == Via::Remote { Via::Alias } else { via };
                        emit(address, via);
                    });
                }
                chain.pop();
            }
            _ => match &self.admin {
                Some(admin) if !looped && !admin.eq_ignore_ascii_case(rcpt) => {
                    emit(admin.clone(), Via::Admin);
                }
                _ => emit(format!("{local}@{}", self.domain), Via::Local),
            },
        }
    }
}

/// How a recipient reached its final address (`sendmail -bv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Not ours: goes upstream as written.
    Remote,
    /// An address an alias names.
    Alias,
    /// A local name without an alias and no `admin`: qualified with `domain`.
    Local,
    /// A local name without an alias: `admin`.
    Admin,
}

impl Via {
    /// The word `sendmail -bv` prints after an address.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::Alias => "alias",
            Self::Local => "local, qualified",
            Self::Admin => "admin",
        }
    }
}

/// The mail domain when the config names none: `/etc/mailname` (Debian), else the host's
/// fully qualified name from `/etc/hosts`, else the host name. Arguments are the files'
/// contents (`None` when absent) and the kernel host name.
pub fn discover_domain(mailname: Option<&str>, hosts: Option<&str>, hostname: &str) -> String {
    if let Some(name) = mailname.and_then(|m| {
        m.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
    }) {
        return name.to_ascii_lowercase();
    }
    if hostname.contains('.') {
        return hostname.to_ascii_lowercase();
    }
    let fqdn = hosts.and_then(|text| {
        text.lines().find_map(|line| {
            let line = line.split('#').next().unwrap_or("");
            let names: Vec<&str> = line.split_whitespace().skip(1).collect();
            if !names.iter().any(|n| n.eq_ignore_ascii_case(hostname)) {
                return None;
            }
            let short = format!("{}.", hostname.to_ascii_lowercase());
            names
                .iter()
                .find(|n| n.to_ascii_lowercase().starts_with(&short))
                .map(|n| n.to_ascii_lowercase())
        })
    });
    fqdn.unwrap_or_else(|| hostname.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(aliases: &str, admin: Option<&str>) -> AddressMap {
        AddressMap::new(
            "site.example",
            &["raspberrypi"],
            Aliases::parse(aliases).unwrap(),
            admin.map(str::to_owned),
        )
    }

    #[test]
    fn bare_names_are_qualified_with_the_domain() {
        let m = map("", None);
        assert_eq!(m.recipients(&["root"]), ["root@site.example"]);
        assert_eq!(m.sender("root"), "root@site.example");
        assert_eq!(m.sender("cron@raspberrypi"), "cron@site.example");
        assert_eq!(m.sender("cron@localhost"), "cron@site.example");
        assert_eq!(m.sender("ups@other.example"), "ups@other.example");
        assert_eq!(m.sender(""), "");
    }

    #[test]
    fn aliases_expand_recursively_and_a_self_reference_stops() {
        let m = map(
            "root: ops\nops: a@corp.example, ops\npostmaster: root\n",
            None,
        );
        assert_eq!(
            m.recipients(&["postmaster@localhost"]),
            ["a@corp.example", "ops@site.example"]
        );
        assert_eq!(m.recipients(&["ROOT@RaspberryPi"]), m.recipients(&["root"]));
        // Remote recipients are not touched, even if their local part is an alias.
        assert_eq!(m.recipients(&["root@corp.example"]), ["root@corp.example"]);
    }

    #[test]
    fn local_names_without_an_alias_go_to_admin() {
        let m = map("root: ops@corp.example\n", Some("admin@corp.example"));
        assert_eq!(m.recipients(&["root"]), ["ops@corp.example"]);
        assert_eq!(m.recipients(&["pi"]), ["admin@corp.example"]);
        assert_eq!(
            m.recipients(&["www-data@site.example"]),
            ["admin@corp.example"]
        );
        // Duplicates collapse.
        assert_eq!(m.recipients(&["pi", "nobody"]), ["admin@corp.example"]);
        let explained = m.explain("pi");
        assert_eq!(explained, [("admin@corp.example".to_owned(), Via::Admin)]);
    }

    #[test]
    fn an_alias_loop_ends() {
        let m = map("a: b\nb: a\n", Some("admin@corp.example"));
        assert_eq!(m.recipients(&["a"]), ["a@site.example"]);
    }

    #[test]
    fn the_domain_comes_from_mailname_then_hosts_then_hostname() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 pi.lan.example pi # comment\n";
        assert_eq!(
            discover_domain(Some("mail.example\n"), Some(hosts), "pi"),
            "mail.example"
        );
        assert_eq!(
            discover_domain(Some("\n"), Some(hosts), "pi"),
            "pi.lan.example"
        );
        assert_eq!(discover_domain(None, Some(hosts), "pi"), "pi.lan.example");
        assert_eq!(discover_domain(None, None, "pi"), "pi");
        assert_eq!(discover_domain(None, None, "Host.Example"), "host.example");
    }
}

//! Local names and the mail domain in the configuration: `domain`, `[aliases]`, `aliases_file`
//! and `admin`, typed and checked, with their discovered defaults. Reads
//! `aliases_file`, `/etc/mailname` and `/etc/hosts`; the mapping itself is `crate::mapping`'s.

use std::path::PathBuf;

use super::check::is_hostname;
use super::file::{ConfigFile, Problem};
use crate::aliases::Aliases;
use crate::mapping::{discover_domain, AddressMap};

/// The local names part of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalNames {
    /// `domain`: qualifies bare names; lower case.
    pub domain: String,
    /// `admin`: where mail for a local name without an alias goes.
    pub admin: Option<String>,
    /// `aliases_file`, if set (relative paths resolved against the config file's directory).
    pub aliases_file: Option<PathBuf>,
    /// The `[aliases]` table as configured.
    pub table: Aliases,
    /// `aliases_file`'s entries with the table's on top: what the mapping uses.
    pub aliases: Aliases,
    /// The host's own names: the `hostname` key and the kernel's host name.
    pub host_names: Vec<String>,
}

impl LocalNames {
    /// The defaults for a host named `hostname` (the `hostname` key): the domain from
    /// `/etc/mailname`, else the host's fully qualified name in `/etc/hosts`, else `hostname`.
    /// `kernel` is the kernel's host name.
    pub(super) fn discovered(hostname: &str, kernel: &str) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let mailname = read("/etc/mailname");
        let found = discover_domain(mailname.as_deref(), read("/etc/hosts").as_deref(), kernel);
        let domain = if found.contains('.') || !is_hostname(&found) {
            found
        } else {
            hostname.to_ascii_lowercase()
        };
        Self {
            domain,
            host_names: host_names(hostname, kernel),
            ..Self::default()
        }
    }

    /// The mapping intake applies to every message.
    pub fn address_map(&self) -> AddressMap {
        let names: Vec<&str> = self.host_names.iter().map(String::as_str).collect();
        AddressMap::new(
            &self.domain,
            &names,
            self.aliases.clone(),
            self.admin.clone(),
        )
    }
}

fn host_names(hostname: &str, kernel: &str) -> Vec<String> {
    let mut names = vec![hostname.to_ascii_lowercase()];
    let kernel = kernel.to_ascii_lowercase();
    if !names.contains(&kernel) {
        names.push(kernel);
    }
    names
}

/// Types and checks `domain`, `[aliases]`, `aliases_file` and `admin` for a host named
/// `hostname` (the kernel calls it `kernel`); problems are pushed on `problems`, named by key.
pub(super) fn local_names(
    file: &ConfigFile,
    (hostname, kernel): (&str, &str),
    problems: &mut Vec<Problem>,
) -> LocalNames {
    let mut local = LocalNames::discovered(hostname, kernel);
    if let Some(domain) = &file.domain {
        if is_hostname(domain) {
            local.domain = domain.to_ascii_lowercase();
        } else {
            problems.push(Problem::new(
                "domain",
                format!("{domain:?} is not a valid domain name"),
            ));
        }
    }
    if let Some(admin) = &file.admin {
        match qualified_address(admin) {
            Ok(admin) => local.admin = Some(admin),
            Err(message) => problems.push(Problem::new("admin", message)),
        }
    }
    if let Some(path) = &file.aliases_file {
        let path = PathBuf::from(path);
        match std::fs::read_to_string(&path) {
            Err(e) => problems.push(Problem::new(
                "aliases_file",
                format!("cannot read {}: {e}", path.display()),
            )),
            Ok(text) => match Aliases::parse(&text) {
                Ok(aliases) => local.aliases = aliases,
                Err(errors) => problems.extend(
                    errors
                        .into_iter()
                        .map(|e| Problem::new("aliases_file", format!("{}: {e}", path.display()))),
                ),
            },
        }
        local.aliases_file = Some(path);
    }
    for (name, targets) in file.aliases.iter().flatten() {
        let targets: Vec<&str> = targets.as_slice().iter().map(String::as_str).collect();
        let checked = local.table.insert(name, &targets);
        if let Err(message) = checked.and_then(|()| local.aliases.insert(name, &targets)) {
            problems.push(Problem::new(format!("aliases.{name}"), message));
        }
    }
    local
}

/// `admin`: a whole address, `local@domain`.
fn qualified_address(address: &str) -> Result<String, String> {
    let address = address.trim();
    let ok = address.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && is_hostname(domain)
            && !local
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
    });
    if ok {
        Ok(address.to_owned())
    } else {
        Err(format!(
            "{address:?} is not a mail address with a domain (`name@example.com`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (LocalNames, Vec<Problem>) {
        let file = ConfigFile::parse(text).unwrap();
        let mut problems = Vec::new();
        let local = local_names(&file, ("gw.test", "gw"), &mut problems);
        (local, problems)
    }

    #[test]
    fn keys_are_typed_and_lists_allowed() {
        let (local, problems) = parse(
            "domain = \"Site.Example\"\nadmin = \"ops@corp.example\"\n\
             [aliases]\nroot = \"ops@corp.example\"\nteam = [\"a@x.example\", \"b@x.example\"]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(local.domain, "site.example");
        assert_eq!(local.admin.as_deref(), Some("ops@corp.example"));
        assert_eq!(local.aliases.get("team").unwrap().len(), 2);
        assert!(local.host_names.contains(&"gw.test".to_owned()));
        let map = local.address_map();
        assert_eq!(map.recipients(&["root@gw.test"]), ["ops@corp.example"]);
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let (_, problems) =
            parse("domain = \"not a domain\"\nadmin = \"root\"\n[aliases]\nroot = \"|/bin/sh\"\n");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["domain", "admin", "aliases.root"], "{problems:?}");
    }

    #[test]
    fn aliases_file_problems_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        std::fs::write(&path, "root: ops@corp.example\nbackup: |/usr/bin/store\n").unwrap();
        let text = format!("aliases_file = {:?}\n", path.display().to_string());
        let (_, problems) = parse(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "aliases_file");
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
        std::fs::write(&path, "root: ops@corp.example\n").unwrap();
        let (local, problems) = parse(&format!("{text}[aliases]\nroot = \"me@x.example\"\n"));
        assert!(problems.is_empty(), "{problems:?}");
        // The table overrides the file.
        assert_eq!(local.aliases.get("root").unwrap(), ["me@x.example"]);
    }
}

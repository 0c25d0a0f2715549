//! Local aliases: the `[aliases]` table of the config and an `aliases_file` in aliases(5) format,
//! parsed into one table from local name to addresses.
//!
//! A relay forwards mail; it never runs programs or writes files for a sender. So only address
//! entries are accepted: `|command`, `/file` and `:include:` entries are refused with the line
//! that holds them, as is anything that is not an address. Pure: the caller reads the file.

use std::collections::BTreeMap;
use std::fmt;

/// An alias is expanded at most this deep (`a: b`, `b: c`, …): deeper chains are a mistake.
pub const MAX_ALIAS_DEPTH: usize = 10;
/// An alias names at most this many addresses (one message's recipient list stays bounded).
pub const MAX_ALIAS_TARGETS: usize = 100;

/// A local name and what it expands to, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aliases {
    /// Each lower-case local name with its addresses, in the order written.
    table: BTreeMap<String, Vec<String>>,
}

/// Why an aliases entry is refused; `line` is 1-based (0 for the `[aliases]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for AliasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for AliasError {}

impl Aliases {
    /// Parses aliases(5) text: `name: addr, addr`, `#` comments, continuation lines that start
    /// with a space or tab. Every problem is reported, each with its line.
    pub fn parse(text: &str) -> Result<Self, Vec<AliasError>> {
        let mut aliases = Self::default();
        let mut errors = Vec::new();
        for (line, entry) in logical_lines(text) {
            let Some((name, targets)) = entry.split_once(':') else {
                errors.push(AliasError {
                    line,
                    message: format!("{:?} is not `name: address, …`", entry.trim()),
                });
                continue;
            };
            let targets: Vec<&str> = targets.split(',').map(str::trim).collect();
            if let Err(message) = aliases.insert(name.trim(), &targets) {
                errors.push(AliasError { line, message });
            }
        }
        if errors.is_empty() {
            Ok(aliases)
        } else {
            Err(errors)
        }
    }

    /// Adds the alias `name` for `targets` (the `[aliases]` table calls this per key). A later
    /// entry for the same name replaces an earlier one, so the config's table can override the
    /// file.
    pub fn insert(&mut self, name: &str, targets: &[&str]) -> Result<(), String> {
        if name.is_empty() || name.contains(['@', ' ', '\t', '"', '<', '>']) {
            return Err(format!("{name:?} is not a local name"));
        }
        let mut out = Vec::new();
        for target in targets.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            out.push(check_target(target)?);
        }
        if out.is_empty() {
            return Err(format!("alias {name:?} has no address"));
        }
        if out.len() > MAX_ALIAS_TARGETS {
            return Err(format!(
                "alias {name:?} names more than {MAX_ALIAS_TARGETS} addresses"
            ));
        }
        self.table.insert(name.to_ascii_lowercase(), out);
        Ok(())
    }

    /// What `local` (a local part, any case) expands to, if it is an alias.
    pub fn get(&self, local: &str) -> Option<&[String]> {
        self.table
            .get(&local.to_ascii_lowercase())
            .map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The entries in name order (for `check-config`).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.table.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// One target: an address (`local` or `local@domain`, optionally in angle brackets). Programs,
/// files and includes are refused by name.
fn check_target(target: &str) -> Result<String, String> {
    let bare = target
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(target);
    if bare.starts_with('|') || target.starts_with("\"|") {
        return Err(format!(
            "{target:?}: delivery to a program is not supported (outpost only forwards)"
        ));
    }
    if bare.starts_with('/') || target.starts_with("\"/") {
        return Err(format!(
            "{target:?}: delivery to a file is not supported (outpost only forwards)"
        ));
    }
    if bare.to_ascii_lowercase().starts_with(":include:") {
        return Err(format!("{target:?}: :include: is not supported"));
    }
    let valid = !bare.is_empty()
        && bare.len() <= 254
        && !bare.contains(|c: char| c.is_whitespace() || c.is_control())
        && !bare.contains(['"', '<', '>', ',', ';', '\\', '(', ')'])
        && bare.matches('@').count() <= 1
        && !bare.starts_with('@')
        && !bare.ends_with('@');
    if valid {
        Ok(bare.to_owned())
    } else {
        Err(format!("{target:?} is not an address"))
    }
}

/// The file's logical lines with their first line number: comments and blank lines dropped,
/// continuation lines (leading space or tab) joined to the line before.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let continues = line.starts_with([' ', '\t']);
        match out.last_mut() {
            Some((_, entry)) if continues => {
                entry.push(' ');
                entry.push_str(line.trim());
            }
            _ => out.push((index + 1, line.trim().to_owned())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_lists_comments_and_continuations() {
        let text = "# comment\n\
                    root: ops@example.com\n\
                    \n\
                    Postmaster: root\n\
                    team: a@example.com,\n\
                    \tb@example.com , <c@example.com>\n";
        let aliases = Aliases::parse(text).unwrap();
        assert_eq!(aliases.len(), 3);
        assert_eq!(aliases.get("ROOT").unwrap(), ["ops@example.com"]);
        assert_eq!(aliases.get("postmaster").unwrap(), ["root"]);
        assert_eq!(
            aliases.get("team").unwrap(),
            ["a@example.com", "b@example.com", "c@example.com"]
        );
        assert_eq!(aliases.get("nobody"), None);
    }

    #[test]
    fn programs_files_and_includes_are_refused_naming_the_line() {
        let text = "root: ops@example.com\n\
                    backup: |/usr/bin/backup-mail\n\
                    log: /var/log/mail.txt\n\
                    list: :include:/etc/list\n\
                    quoted: \"|cat\"\n\
                    broken line without colon\n";
        let errors = Aliases::parse(text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        assert!(
            errors[0].to_string().starts_with("line 2: "),
            "{}",
            errors[0]
        );
        assert!(errors[0].message.contains("program"), "{}", errors[0]);
        assert!(errors[1].message.contains("file"), "{}", errors[1]);
        assert!(errors[2].message.contains(":include:"), "{}", errors[2]);
    }

    #[test]
    fn bad_names_and_addresses_are_refused() {
        let mut aliases = Aliases::default();
        assert!(aliases.insert("a@b", &["x@example.com"]).is_err());
        assert!(aliases.insert("", &["x@example.com"]).is_err());
        assert!(aliases.insert("root", &[]).is_err());
        assert!(aliases.insert("root", &["two words@x"]).is_err());
        assert!(aliases.insert("root", &["a@b@c"]).is_err());
        assert!(aliases.insert("root", &["ops@example.com"]).is_ok());
        // A later entry replaces an earlier one (the config table overrides the file).
        aliases.insert("root", &["admin"]).unwrap();
        assert_eq!(aliases.get("root").unwrap(), ["admin"]);
    }
}

//! Address lists (RFC 5322 §3.4) as written in To, Cc and Bcc fields and on a sendmail command
//! line, reduced to the bare addresses. Pure; checks no address syntax (the caller qualifies
//! and validates what comes out).

/// The addresses in an address-list header value or a command-line argument: commas outside
/// quotes, comments and angle brackets separate; `<addr>` wins over the display name;
/// comments are dropped; a group's `name:` and `;` are skipped.
pub fn address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut angle: Option<String> = None;
    let (mut quoted, mut comment, mut in_angle) = (false, 0u32, false);
    let mut finish = |current: &mut String, angle: &mut Option<String>| {
        let address = angle.take().unwrap_or_else(|| current.trim().to_owned());
        let address = address.trim().to_owned();
        if !address.is_empty() {
            out.push(address);
        }
        current.clear();
    };
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted || comment > 0 => {
                chars.next();
            }
            '"' if comment == 0 && !in_angle => quoted = !quoted,
            '(' if !quoted && !in_angle => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '<' if !quoted => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            _ if in_angle => {
                if let Some(a) = angle.as_mut() {
                    a.push(c);
                }
            }
            ':' if !quoted => current.clear(), // group name
            ',' | ';' if !quoted => finish(&mut current, &mut angle),
            _ if quoted => {}
            c => current.push(c),
        }
    }
    finish(&mut current, &mut angle);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_give_the_bare_addresses() {
        for (value, expected) in [
            ("a@x", &["a@x"][..]),
            (" a@x , b@x,,", &["a@x", "b@x"]),
            ("Ann <a@x>, \"Doe, Bob\" <b@x>", &["a@x", "b@x"]),
            ("a@x (Ann, admin), b@x", &["a@x", "b@x"]),
            ("(comment (nested)) a@x", &["a@x"]),
            ("team: a@x, b@x;, c@x", &["a@x", "b@x", "c@x"]),
            ("undisclosed-recipients:;", &[]),
            ("\"quoted <not@addr>\" <real@x>", &["real@x"]),
            ("", &[]),
        ] {
            assert_eq!(address_list(value), expected, "{value}");
        }
    }
}

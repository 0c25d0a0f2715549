//! Values in `key=value` log lines that a peer or the smarthost chose: a reply text, an
//! envelope address. [`Quoted`] writes `"…"` and [`Escaped`] the inside of `<…>`, both with
//! `\` and `"` escaped (and `<`, `>` in [`Escaped`]) and control characters as `\xNN`, so
//! no such text can end its field early and forge another (`status=sent`) or a new line. Pure
//! formatting; it never decides what is logged.

use std::fmt::{self, Write as _};

/// `"text"`, escaped: for free text (`reply="…"`, `reason="…"`).
pub struct Quoted<'a>(pub &'a str);

/// `text` escaped, without quotes: for a value the line already delimits (`to=<…>`).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write_escaped(f, self.0, false)?;
        f.write_char('"')
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str, angles: bool) -> fmt::Result {
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                f.write_char('\\')?;
                f.write_char(c)?;
            }
            '<' | '>' if angles => write!(f, "\\x{:02x}", u32::from(c))?,
            c if c.is_control() => match u8::try_from(c) {
                Ok(byte) => write!(f, "\\x{byte:02x}")?,
                Err(_) => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
            },
            // Line and paragraph separators: some log viewers break lines on them.
            '\u{2028}' | '\u{2029}' => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

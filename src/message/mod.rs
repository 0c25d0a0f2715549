//! Internet Message Format (RFC 5322) as pure functions: the header section (where it ends, a
//! bounded read of it, its fields unfolded, a streaming watch for named fields), address lists
//! and dates. Used by `[[priority]]` and `[coalesce]` classification, `sendmail`, DSNs, the
//! digest and `queue show`.
//!
//! Never does I/O of its own (bytes, or an iterator of chunks, are passed in) and never reads
//! the clock (dates format a time the caller gives). Knows nothing of SMTP, the store or the
//! config.

pub use self::address::address_list;
pub use self::date::rfc5322_date;
pub use self::header::{
    field, fields, is_continuation, is_field_start, section_len, split_field, unfold_onto, Field,
    MAX_LINE,
};
pub use self::section::{excerpt, read_section, section_end};
pub use self::watch::{HeaderWatch, MAX_WATCHED};

mod address;
mod date;
mod header;
mod section;
mod watch;

//! The store's errors: `StoreError`, what every fallible store call returns, and `DecodeError`,
//! why a stored record could not be decoded (which the store turns into a quarantine or a
//! `StoreError::Corrupt`). A leaf: depends on no other store module, so the record and body
//! file code can both use it. Never holds anything but the error values.

use std::fmt;

use super::QueueId;

#[derive(Debug)]
pub enum StoreError {
    Sled(String),
    Io(std::io::Error),
    Corrupt(String),
    /// A body piece failed its checksum: its content was altered on disk.
    Damaged(String),
    NotFound(QueueId),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sled(e) => write!(f, "store: {e}"),
            Self::Io(e) => write!(f, "store I/O: {e}"),
            Self::Corrupt(e) => write!(f, "store record corrupt: {e}"),
            Self::Damaged(e) => write!(f, "store body damaged: {e}"),
            Self::NotFound(id) => write!(f, "no message {id} in the queue"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => Self::Io(e),
            other => Self::Sled(other.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// Why a stored record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DecodeError(pub(super) &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

//! `Config`: the validated, typed configuration and the embedded defaults.

//! The suite's glue over the test kit (`tests/kit`): everything the kit offers, under the one
//! name the tests import from. Holds no peer, client or wait of its own.

pub(crate) use crate::kit::*;

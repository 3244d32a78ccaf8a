//! Tenant ingest (`/v1/ingest`, `/v1/config`): access keys, tokens, routes, limits, Fluent Bit framings.

#[allow(unused_imports)]
use crate::helpers::*;

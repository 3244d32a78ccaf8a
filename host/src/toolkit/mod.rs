//! Tools for plugin authors and operators: scaffold a plugin (`new`), check a component
//! (`check`), run one against recorded inputs (`test`), show a plugin's description
//! (`describe`), watch what reaches consumers (`tap`) and send a test report now (`probe`).
//!
//! `check` and `test` load the component with the host's own runtime (`crate::runtime`) in a
//! throw-away [`sandbox::Sandbox`]; `tap` and `probe` run inside a serving host, behind the admin
//! API.

pub mod check;
pub mod cli;
pub mod describe;
pub mod new;
pub mod probe;
pub mod sandbox;
pub mod tap;
pub mod test;

// Secrets are hidden by `crate::redact` (delivery's tap uses it too); `test` names them so.
use crate::redact::{looks_secret, secret_params};

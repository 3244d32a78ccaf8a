//! The public listener: TLS, client certificates, certificate reload, slow clients.

#[allow(unused_imports)]
use crate::helpers::*;

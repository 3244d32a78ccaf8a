//! Access tokens: static bearer tokens (compared in constant time) and JWTs.

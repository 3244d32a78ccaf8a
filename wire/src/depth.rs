//! How deep a JSON text nests, found without parsing it.

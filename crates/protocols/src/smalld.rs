//! smalld codec: see `../shared/protocols/smalld.md`.

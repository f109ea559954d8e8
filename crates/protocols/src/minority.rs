//! minority codec: see `../shared/protocols/minority.md`.

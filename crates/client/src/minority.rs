//! minority client.

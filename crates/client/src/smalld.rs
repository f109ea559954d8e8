//! smalld client.

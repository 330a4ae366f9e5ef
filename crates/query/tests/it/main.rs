//! Mango query tests against a real store.

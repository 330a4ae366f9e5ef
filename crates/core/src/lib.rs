//! The pure heart of Outpost: revision ids, revision trees, CouchDB's winner rule, deterministic
//! revision hashing, attachments' gzip encoding, CouchDB's collation of JSON values, Mango selectors, JSON decoded as CouchDB decodes it and the naming rules for
//! databases and documents.
//!
//! Nothing in this crate does I/O, so everything in it can be tested exhaustively.

pub mod attachment;
pub mod collate;
pub mod hash;
pub mod json;
pub mod names;
pub mod policy;
pub mod rev;
pub mod selector;
pub mod tree;

pub use names::{DocKind, NameError};
pub use policy::{Policy, Resolution};
pub use rev::{Rev, RevError};
pub use selector::{Selector, SelectorError};
pub use tree::{Leaf, MergeError, Purged, RevTree};

//! Mango selectors, as used by `_changes?filter=_selector` and selector replication.

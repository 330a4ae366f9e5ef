//! What a step of the document writer stores, gathered while the step runs and handed to the
//! engine at once ([`DocTx::write`]), so that an engine can write a chunk of documents with a
//! few multi-row statements; and what the step's later revisions read from it meanwhile.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use super::DocTx;
use crate::{NewAttachment, StoreError};

/// Everything one step of the writer stores, handed to [`DocTx::write`] at once. Each attachment
/// digest, revision and document appears once.
#[derive(Debug, Default)]
pub struct Writes {
    pub attachments: Vec<NewAttachment>,
    pub revs: Vec<RevWrite>,
    pub docs: Vec<DocRowWrite>,
    pub events: Vec<EventWrite>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.attachments.is_empty()
            && self.revs.is_empty()
            && self.docs.is_empty()
            && self.events.is_empty()
    }
}

/// A revision's body as the writer stores it.
#[derive(Debug)]
pub struct RevWrite {
    pub db: i64,
    pub doc: String,
    pub rev: String,
    pub deleted: bool,
    /// The body as JSON, without `_id` and `_rev`.
    pub body: String,
}

/// A document's row as the writer stores it.
#[derive(Debug, Clone)]
pub struct DocRowWrite {
    pub db: i64,
    pub id: String,
    /// Whether the document had no row when the step read it (under the engine's write lock on
    /// the document): the row is inserted, else the existing one is replaced.
    pub new: bool,
    pub seq: u64,
    pub deleted: bool,
    /// Whether the document has more than one live leaf.
    pub conflicted: bool,
    /// The winning revision.
    pub winner: String,
    /// The revision tree as JSON.
    pub tree: String,
}

/// One event as the writer appends it.
#[derive(Debug, Clone)]
pub struct EventWrite {
    pub db: i64,
    pub seq: u64,
    /// The event's place among the events of its sequence.
    pub pos: i64,
    pub kind: &'static str,
    pub doc: String,
    pub rev: String,
    pub parent: Option<String>,
    pub origin: String,
    /// Seconds since the Unix epoch.
    pub at: i64,
    pub detail: Option<String>,
    /// Whether the revision is a deletion: replay reads it from the log, never from the tables.
    pub deleted: bool,
}

/// The writes of a step not handed to the engine yet, and what the step's later reads need
/// from them: a body written earlier in the step is found here before it is in the engine.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) writes: Writes,
    /// Where each (document, revision) is in `writes.revs`.
    revs: HashMap<(String, String), usize>,
    digests: HashSet<String>,
    /// Documents stored in the step whose access index must follow them, once the step's
    /// revisions are written: (id, sequence, winner, deleted).
    pub(super) access: Vec<(String, u64, String, bool)>,
}

impl Pending {
    pub(super) fn put_rev(&mut self, rev: RevWrite) {
        let key = (rev.doc.clone(), rev.rev.clone());
        // As with a stored revision, the first body written is kept.
        if let Entry::Vacant(e) = self.revs.entry(key) {
            e.insert(self.writes.revs.len());
            self.writes.revs.push(rev);
        }
    }

    pub(super) fn put_attachment(&mut self, att: NewAttachment) {
        if self.digests.insert(att.digest.clone()) {
            self.writes.attachments.push(att);
        }
    }

    /// A revision's body: the stored one, else one written earlier in the step.
    pub(super) fn rev_body(
        &self,
        tx: &dyn DocTx,
        db: i64,
        doc: &str,
        rev: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(body) = tx.rev_body(db, doc, rev)? {
            return Ok(Some(body));
        }
        Ok(self
            .revs
            .get(&(doc.to_owned(), rev.to_owned()))
            .map(|&i| self.writes.revs[i].body.clone()))
    }

    /// Hands the step's writes to the engine, then brings the access index up to date.
    pub(super) fn flush(self, tx: &dyn DocTx, db: i64) -> Result<(), StoreError> {
        if !self.writes.is_empty() {
            tx.write(&self.writes)?;
        }
        for (id, seq, winner, deleted) in &self.access {
            tx.index_access(db, id, *seq, winner, *deleted)?;
        }
        Ok(())
    }
}

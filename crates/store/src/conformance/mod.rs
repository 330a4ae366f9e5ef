//! The behaviour every [`Store`] engine must have, as one suite run against each engine
//! (built with the `conformance` feature, for tests only).
//!
//! Each check is a `pub async fn(Arc<dyn Store>)` that gets a fresh, empty store. An engine's
//! test binary runs them all with [`conformance_suite!`](crate::conformance_suite), giving it a
//! function that opens fresh stores; so the SQLite engine (plain and encrypted) and the
//! PostgreSQL engine pass exactly the same checks.

pub mod access;
pub mod attachments;
pub mod basics;
pub mod compaction;
pub mod documents;
pub mod index;
pub mod lease;
pub mod purge;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::{DocUpdate, Origin, Store, UpdateMode};

/// A fresh store for one check, with whatever keeps it alive (a temporary directory, a schema
/// dropped afterwards) until the check is done.
pub struct Engine {
    pub store: Arc<dyn Store>,
    /// Dropped after the check.
    pub guard: Box<dyn std::any::Any + Send>,
}

/// An interactive edit of `id` from `base` with body `v` (a JSON object).
pub fn edit(id: &str, base: Option<&outpost_core::Rev>, v: Value) -> DocUpdate {
    let body: Map<String, Value> = v.as_object().cloned().unwrap_or_default();
    DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit {
            base: base.cloned(),
        },
        deleted: false,
        body,
        new_attachments: Vec::new(),
        origin: Origin::Client,
    }
}

/// Defines one `#[tokio::test]` per check of the suite. `$open` is an async function returning
/// `Vec<Engine>`: every engine the check runs on, each fresh (empty when the engine is not
/// available here, after saying why).
#[macro_export]
macro_rules! conformance_suite {
    ($open:path) => {
        $crate::conformance_suite!(@checks $open;
            basics::databases_are_created_once_and_deleted_with_their_documents,
            basics::database_updates_list_each_database_at_its_latest_event,
            basics::security_objects_are_kept_per_database_and_go_with_it,
            basics::concurrent_writers_all_commit,
            basics::a_conflicting_edit_fails_alone,
            basics::local_documents_check_their_revision,
            basics::attachments_are_read_whole_or_by_range,
            attachments::encoded_attachments_keep_their_bytes_and_coding_through_every_revision,
            attachments::the_same_bytes_stored_encoded_and_as_they_are_keep_both_meanings,
            attachments::a_new_attachment_in_a_coding_that_cannot_be_served_is_refused,
            basics::batched_reads_match_single_reads_in_the_order_asked,
            index::rows_come_back_in_collation_order_then_doc_id,
            index::ranges_skip_and_limit,
            index::counts_stop_at_the_cap_and_ignore_paging,
            index::a_step_replaces_a_documents_rows_and_applies_only_where_it_started,
            index::include_docs_joins_the_current_winner,
            index::indexes_are_listed_dropped_and_go_with_their_database,
            compaction::compaction_collects_attachments_no_stored_revision_refers_to,
            compaction::compaction_drops_superseded_and_stemmed_bodies_and_keeps_leaves,
            documents::a_documents_revisions_of_one_request_take_one_sequence,
            documents::a_requests_revisions_build_on_each_other_before_they_are_stored,
            documents::an_automatic_policy_resolves_in_the_writer,
            documents::a_conflict_is_resolved_by_hand_from_its_exact_leaves,
            documents::retention_trims_the_log_and_keeps_the_documents,
            documents::pages_count_and_ranges_follow_the_id_order,
            documents::compact_running_is_reported_while_a_compaction_is_marked,
            lease::a_lease_has_one_holder_until_it_expires_or_is_released,
            lease::an_expired_lease_is_taken_over,
            access::a_reader_sees_what_names_them_and_losing_it_as_a_deletion,
            access::feeds_follow_the_model_and_page_exactly,
            purge::purging_every_leaf_removes_the_document,
            purge::purging_some_leaves_keeps_the_rest_with_a_new_winner,
            purge::purged_attachment_bytes_are_collected,
            purge::an_index_step_from_before_a_purge_writes_no_rows_for_it,
            purge::a_purged_document_leaves_the_access_index,
            purge::the_purged_infos_limit_is_kept_per_database
        );
    };
    (@checks $open:path; $($area:ident :: $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                for engine in $open().await {
                    $crate::conformance::$area::$check(engine.store.clone()).await;
                    drop(engine);
                }
            }
        )*
    };
}

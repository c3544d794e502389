//! The typed batch a perspective's bulk apply hook receives (see the
//! `bulk` module for when it is called and what a failure does).

use crate::store::{ModelKey, StoredEvent};

/// One batch of changed models, as the bulk hook receives it.
///
/// ```
/// use whizbang_core::perspective::BulkBatch;
///
/// #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
/// struct Totals { count: u64 }
///
/// async fn upsert_all(batch: BulkBatch<'_, Totals>) -> Result<(), std::io::Error> {
///     let rows: Vec<_> = batch
///         .iter()
///         .filter_map(|item| item.model().map(|m| (item.key(), m.count)))
///         .collect();
///     let deleted: Vec<_> = batch.deleted().collect();
///     // One statement for `rows` and one for `deleted`, in the user's own store.
///     let _ = (rows, deleted);
///     Ok(())
/// }
/// # let _ = upsert_all;
/// ```
#[derive(Debug)]
pub struct BulkBatch<'a, M> {
    perspective: &'static str,
    items: Vec<BulkItem<'a, M>>,
    rebuild: bool,
}

impl<'a, M> BulkBatch<'a, M> {
    /// The perspective's name.
    #[must_use]
    pub fn perspective(&self) -> &'static str {
        self.perspective
    }

    /// The changed models, in the order the batch commits them.
    #[must_use]
    pub fn items(&self) -> &[BulkItem<'a, M>] {
        &self.items
    }

    /// Iterates over the changed models.
    pub fn iter(&self) -> std::slice::Iter<'_, BulkItem<'a, M>> {
        self.items.iter()
    }

    /// The keys of the models this batch deletes (tombstones).
    pub fn deleted(&self) -> impl Iterator<Item = ModelKey> + '_ {
        self.items
            .iter()
            .filter(|i| i.is_deleted())
            .map(BulkItem::key)
    }

    /// How many models changed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no model changed (the hook is never called with an empty batch).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the batch is a chunk of a rebuild: its models go to the
    /// rebuild's shadow and replace the live ones only when the rebuild
    /// swaps. A hook feeding a store of its own may write these beside its
    /// live rows, or skip them.
    #[must_use]
    pub fn is_rebuild(&self) -> bool {
        self.rebuild
    }
}

impl<'b, 'a, M> IntoIterator for &'b BulkBatch<'a, M> {
    type Item = &'b BulkItem<'a, M>;
    type IntoIter = std::slice::Iter<'b, BulkItem<'a, M>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// One changed model of a [`BulkBatch`].
#[derive(Debug)]
pub struct BulkItem<'a, M> {
    key: ModelKey,
    model: Option<&'a M>,
    events: Vec<&'a StoredEvent>,
}

impl<'a, M> BulkItem<'a, M> {
    /// The model's key (its stream, or the value a keyed perspective takes
    /// from each event).
    #[must_use]
    pub fn key(&self) -> ModelKey {
        self.key
    }

    /// The model as it is about to be written; `None` when the batch deletes
    /// it (a tombstone).
    #[must_use]
    pub fn model(&self) -> Option<&'a M> {
        self.model
    }

    /// Whether the batch deletes the model.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.model.is_none()
    }

    /// The events of this batch folded into the model, in order.
    #[must_use]
    pub fn events(&self) -> &[&'a StoredEvent] {
        &self.events
    }
}

impl<'a, M> BulkBatch<'a, M> {
    /// The batch, for the erased hook.
    pub(crate) fn new(
        perspective: &'static str,
        items: Vec<BulkItem<'a, M>>,
        rebuild: bool,
    ) -> Self {
        BulkBatch {
            perspective,
            items,
            rebuild,
        }
    }
}

impl<'a, M> BulkItem<'a, M> {
    /// One item, for the erased hook.
    pub(crate) fn new(key: ModelKey, model: Option<&'a M>, events: Vec<&'a StoredEvent>) -> Self {
        BulkItem { key, model, events }
    }
}

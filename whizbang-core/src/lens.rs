//! Lenses: typed reads of perspective read models.
//!
//! This module owns [`LensQuery`], the read side's contract, and [`Lens`], its
//! implementation over any [`PerspectiveStore`]. It reads only; it never applies.

use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::{IntoModelKey, Perspective, Versioned};
use crate::store::{ModelQuery, ModelRow, ModelValue, PerspectiveStore};
use crate::sync::{PerspectiveSyncAwaiter, PerspectiveSyncOptions};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

type Predicate<M> = Box<dyn Fn(&M) -> bool + Send + Sync>;

/// A filtered, ordered, paged list query over read models of type `M`.
///
/// [`contains`](Self::contains) and [`order_by`](Self::order_by) run in the
/// store ([`PerspectiveStore::query_models`]: in SQL on a database, against
/// its index); so do [`offset`](Self::offset) and [`limit`](Self::limit)
/// unless a closure [`filter`](Self::filter) is set, which runs in memory on
/// what the store returns.
///
/// ```
/// use whizbang_core::ListQuery;
/// # #[derive(serde::Deserialize)] struct Order { total: u64 }
/// let open_orders_by_total = ListQuery::<Order>::all()
///     .contains(serde_json::json!({ "status": "open" }))
///     .order_by_desc(&["total"])
///     .limit(10);
/// ```
pub struct ListQuery<M> {
    filter: Option<Predicate<M>>,
    store: ModelQuery,
}

impl<M> Default for ListQuery<M> {
    fn default() -> Self {
        ListQuery {
            filter: None,
            store: ModelQuery::new(),
        }
    }
}

impl<M> std::fmt::Debug for ListQuery<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListQuery")
            .field("filtered", &self.filter.is_some())
            .field("store", &self.store)
            .finish()
    }
}

impl<M> ListQuery<M> {
    /// Every model, ordered by id.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Keeps only models for which `predicate` holds (in memory, after the
    /// store's filter and order).
    #[must_use]
    pub fn filter(mut self, predicate: impl Fn(&M) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(predicate));
        self
    }

    /// Keeps only models whose JSON contains `json` (PostgreSQL's `@>`; see
    /// [`ModelQuery::contains`](crate::store::ModelQuery::contains)). Runs in the store.
    #[must_use]
    pub fn contains(mut self, json: serde_json::Value) -> Self {
        self.store = self.store.contains(json);
        self
    }

    /// Orders by the model's JSON value at `path`, smallest first, then by id
    /// (see [`ModelOrder::Path`](crate::store::ModelOrder::Path)). Runs in the store.
    #[must_use]
    pub fn order_by(mut self, path: &[&str]) -> Self {
        self.store = self.store.order_by(path);
        self
    }

    /// Orders by the model's JSON value at `path`, largest first, then by id.
    /// Runs in the store.
    #[must_use]
    pub fn order_by_desc(mut self, path: &[&str]) -> Self {
        self.store = self.store.order_by_desc(path);
        self
    }

    /// Skips the first `n` matches.
    #[must_use]
    pub fn offset(mut self, n: usize) -> Self {
        self.store = self.store.offset(n);
        self
    }

    /// Returns at most `n` matches.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.store = self.store.limit(n);
        self
    }

    /// Whether `model` passes the filter.
    pub fn matches(&self, model: &M) -> bool {
        self.filter.as_ref().is_none_or(|f| f(model))
    }
}

/// Reads read models of type `M`.
pub trait LensQuery<M>: Send + Sync {
    /// The model with this id, if any.
    fn get(&self, id: StreamId) -> impl Future<Output = Result<Option<M>>> + Send;
    /// The models matching `query`, in its order (by id unless it says
    /// otherwise), each with its id and the stream version it reflects
    /// ([`Versioned`] dereferences to the model).
    fn list(&self, query: ListQuery<M>) -> impl Future<Output = Result<Vec<Versioned<M>>>> + Send;
}

/// A lens whose reads first wait until perspective `P` has applied what the
/// options select (read-your-writes). Made by [`SyncLensExt::with_sync`].
pub struct SyncedLens<L, P> {
    lens: L,
    awaiter: PerspectiveSyncAwaiter,
    options: PerspectiveSyncOptions,
    _p: PhantomData<fn() -> P>,
}

impl<L, P: Perspective> std::fmt::Debug for SyncedLens<L, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedLens")
            .field("perspective", &P::NAME)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<L, P: Perspective> SyncedLens<L, P> {
    /// Waits for `P`, then runs `read` within what is left of the timeout (plus
    /// [`PerspectiveSyncOptions::SLACK`]): the whole read is bounded.
    async fn synced<T>(&self, read: impl Future<Output = Result<T>>) -> Result<T> {
        let timeout = self.options.timeout;
        let result = self.awaiter.wait::<P>(self.options.clone()).await?;
        let left = timeout
            .saturating_add(PerspectiveSyncOptions::SLACK)
            .saturating_sub(result.elapsed);
        result.into_result()?;
        tokio::time::timeout(left, read)
            .await
            .unwrap_or(Err(Error::PerspectiveSyncTimeout {
                perspective: P::NAME,
                timeout,
            }))
    }
}

impl<M, L, P> LensQuery<M> for SyncedLens<L, P>
where
    M: Send,
    L: LensQuery<M>,
    P: Perspective,
{
    /// Waits for `P`, then reads. A timeout or a perspective failure is an error
    /// ([`Error::PerspectiveSyncTimeout`], [`Error::PerspectiveFailed`]): you asked
    /// to see your writes, so stale data is not returned silently. The wait and
    /// the read together end within the timeout plus
    /// [`PerspectiveSyncOptions::SLACK`].
    async fn get(&self, id: StreamId) -> Result<Option<M>> {
        self.synced(self.lens.get(id)).await
    }

    async fn list(&self, query: ListQuery<M>) -> Result<Vec<Versioned<M>>> {
        self.synced(self.lens.list(query)).await
    }
}

/// Adds [`with_sync`](SyncLensExt::with_sync) to every lens.
pub trait SyncLensExt<M>: LensQuery<M> + Sized {
    /// A lens whose reads first wait until `P` has applied what `options` selects.
    fn with_sync<P: Perspective>(
        self,
        awaiter: &PerspectiveSyncAwaiter,
        options: impl Into<PerspectiveSyncOptions>,
    ) -> SyncedLens<Self, P> {
        SyncedLens {
            lens: self,
            awaiter: awaiter.clone(),
            options: options.into(),
            _p: PhantomData,
        }
    }
}

impl<M, L: LensQuery<M>> SyncLensExt<M> for L {}

/// The lens of perspective `P`, over any [`PerspectiveStore`].
pub struct Lens<P> {
    store: Arc<dyn PerspectiveStore>,
    _p: PhantomData<fn() -> P>,
}

impl<P> Clone for Lens<P> {
    fn clone(&self) -> Self {
        Lens {
            store: Arc::clone(&self.store),
            _p: PhantomData,
        }
    }
}

impl<P: Perspective> std::fmt::Debug for Lens<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lens")
            .field("perspective", &P::NAME)
            .finish()
    }
}

impl<P: Perspective> Lens<P> {
    /// A lens over `store`.
    #[must_use]
    pub fn new(store: Arc<dyn PerspectiveStore>) -> Self {
        Lens {
            store,
            _p: PhantomData,
        }
    }

    fn decode(row: ModelRow) -> Result<P::Model> {
        match row.model {
            ModelValue::Typed(m) => m
                .into_any()
                .downcast::<P::Model>()
                .map(|b| *b)
                .map_err(|_| {
                    Error::Invariant(format!(
                        "stored model of perspective {} has another type",
                        P::NAME
                    ))
                }),
            ModelValue::Json(j) => {
                serde_json::from_str(j.get()).map_err(|source| Error::Deserialization {
                    type_name: format!("model of perspective {}", P::NAME),
                    source,
                })
            }
        }
    }

    /// The model of a keyed perspective stored under `key`: the value its
    /// events carry in the field `#[perspective(key = ..)]` names (a
    /// customer id). The same read as [`get`](LensQuery::get), with the key
    /// converted ([`IntoModelKey`]).
    ///
    /// # Errors
    /// A backend or decode error.
    pub async fn get_by_key(&self, key: impl IntoModelKey) -> Result<Option<P::Model>> {
        Ok(self
            .get_versioned(key.to_model_key())
            .await?
            .map(|(m, _)| m))
    }

    /// The model with this id and the stream version it reflects.
    ///
    /// # Errors
    /// A backend or decode error.
    pub async fn get_versioned(&self, id: StreamId) -> Result<Option<(P::Model, u64)>> {
        match self.store.load_model(P::NAME, id).await? {
            Some(row) => {
                let v = row.version;
                Ok(Some((Self::decode(row)?, v)))
            }
            None => Ok(None),
        }
    }
}

impl<P: Perspective> LensQuery<P::Model> for Lens<P> {
    async fn get(&self, id: StreamId) -> Result<Option<P::Model>> {
        Ok(self.get_versioned(id).await?.map(|(m, _)| m))
    }

    async fn list(&self, query: ListQuery<P::Model>) -> Result<Vec<Versioned<P::Model>>> {
        // With no closure filter the store pages too; with one, it filters and
        // orders and the page is cut here, after the closure.
        let mut pushed = query.store.clone();
        let (offset, limit) = if query.filter.is_some() {
            (std::mem::take(&mut pushed.offset), pushed.limit.take())
        } else {
            (0, None)
        };
        let rows = self.store.query_models(P::NAME, &pushed).await?;
        let mut out = Vec::new();
        let mut skipped = 0;
        for row in rows {
            let (id, version) = (row.id, row.version);
            let m = Self::decode(row)?;
            if !query.matches(&m) {
                continue;
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            out.push(Versioned {
                id,
                version,
                model: m,
            });
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }
}

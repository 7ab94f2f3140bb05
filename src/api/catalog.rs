//! The catalogue's writes: plans, add-ons, tenants and subscriptions, each stored as given
//! (upsert by its key) and answered as stored.

use super::{to_value, Ctx};
use crate::domain::catalog::{Addon, Plan, Subscription, TenantPut};
use crate::error::Result;
use crate::store;
use crate::wire::{self, AddonDto, PlanDto, SubscriptionDto, TenantDto, TenantPutDto};
use serde_json::Value;

pub(super) async fn put_plan(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let plan = Plan::try_from(wire::parse::<PlanDto>(payload)?)?;
    store::catalog::put_plan(ctx.pool, &plan).await?;
    to_value(PlanDto::from(&plan))
}

pub(super) async fn put_addon(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let addon = Addon::try_from(wire::parse::<AddonDto>(payload)?)?;
    store::catalog::put_addon(ctx.pool, &addon).await?;
    to_value(AddonDto::from(&addon))
}

/// A subscription names a tenant that `tenants.put` created: an unknown one is `not_found`.
pub(super) async fn put_subscription(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let sub = Subscription::try_from(wire::parse::<SubscriptionDto>(payload)?)?;
    store::catalog::put_subscription(ctx.pool, &sub).await?;
    to_value(SubscriptionDto::from(&sub))
}

pub(super) async fn put_tenant(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let put = TenantPut::try_from(wire::parse::<TenantPutDto>(payload)?)?;
    let tenant = store::catalog::put_tenant(ctx.pool, &put).await?;
    to_value(TenantDto::from(&tenant))
}

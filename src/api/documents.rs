//! `invoices.render`: the tax invoice document of an invoice (CONTRACT.md 5b), scoped like
//! `invoices.get`, with the parties it recorded when it was issued.

use super::{scope_tenant, to_value, Ctx, Scope};
use crate::domain::catalog::TenantId;
use crate::domain::document::{self, Format, Parties, Recipient, Related, Seller, TaxInvoiceView};
use crate::domain::invoice::Invoice;
use crate::error::{Error, Result};
use crate::store;
use crate::wire::{self, RenderRequest, Rendered};
use serde_json::Value;
use uuid::Uuid;

/// NATS's default `max_payload` is 1 MiB; a reply must fit in it with its JSON envelope.
pub const MAX_DOCUMENT_REPLY_BYTES: usize = 1_000_000;

/// A tax invoice document (CONTRACT.md 5b), scoped like `.get`: another tenant's invoice is
/// `not_found`. HTML is returned as text, PDF as base64.
pub(super) async fn render(ctx: &Ctx<'_>, scope: &Scope, payload: &[u8]) -> Result<Value> {
    use base64::Engine;
    let req: RenderRequest = wire::parse(payload)?;
    let format = match req.format.as_deref() {
        None => Format::Html,
        Some(f) => Format::parse(f)
            .ok_or_else(|| Error::bad(format!("format {f:?} must be \"html\" or \"pdf\"")))?,
    };
    let seller = ctx.seller.ok_or_else(|| {
        Error::Conflict(
            "tax invoice documents are not enabled: the worker has no seller configured \
             (set SELLER_NAME and SELLER_ABN, and optionally SELLER_ADDRESS)"
                .into(),
        )
    })?;
    let mut conn = ctx.pool.acquire().await?;
    let invoice = store::invoices::get(&mut conn, req.id, scope_tenant(scope)).await?;
    let (seller, recipient) = document_parties(&mut conn, &invoice, seller).await?;
    let related_ids: Vec<Uuid> = [invoice.superseded_by, invoice.supersedes]
        .into_iter()
        .flatten()
        .collect();
    let numbers = store::invoices::numbers(&mut conn, &related_ids).await?;
    drop(conn);
    let related_of = |id: Option<Uuid>| {
        id.map(|id| document::view::RelatedInvoice {
            id,
            number: numbers.get(&id).cloned().flatten(),
        })
    };
    let related = Related {
        replaced_by: related_of(invoice.superseded_by),
        replaces: related_of(invoice.supersedes),
    };
    let view =
        TaxInvoiceView::build(&invoice, &seller, &recipient, &related).map_err(Error::internal)?;
    // Laying out and subsetting fonts is CPU work: keep it off the async workers.
    let bytes = tokio::task::spawn_blocking(move || document::render(&view, format))
        .await
        .map_err(|e| Error::internal(format!("rendering task: {e}")))?
        .map_err(Error::internal)?;
    let body = match format {
        Format::Html => String::from_utf8(bytes)
            .map_err(|e| Error::internal(format!("rendered HTML is not UTF-8: {e}")))?,
        Format::Pdf => base64::engine::general_purpose::STANDARD.encode(bytes),
    };
    if body.len() > MAX_DOCUMENT_REPLY_BYTES {
        return Err(Error::Conflict(format!(
            "the {} document of invoice {} is {} bytes, more than a NATS reply can carry \
             ({MAX_DOCUMENT_REPLY_BYTES}); try the other format",
            format.as_str(),
            invoice.id,
            body.len()
        )));
    }
    to_value(Rendered {
        content_type: format.content_type(),
        body,
    })
}

/// Who a document shows (CONTRACT.md 5b). An issued invoice (paid or void since, too) shows the
/// parties it recorded when it was issued; one that did not record them all (issued before they
/// were recorded, or by a worker without a supplier) gets the rest from who is in force now,
/// recorded by this first render so that every later one shows the same. A draft, even a void
/// one, was never a tax invoice: it shows who is in force now and records nothing.
async fn document_parties(
    conn: &mut sqlx::PgConnection,
    invoice: &Invoice,
    seller_now: &Seller,
) -> Result<(Seller, Recipient)> {
    let issued = invoice.number.is_some();
    let recorded = invoice.parties.as_ref().filter(|_| issued);
    if let Some(Parties {
        seller: Some(seller),
        recipient,
    }) = recorded
    {
        return Ok((seller.clone(), recipient.clone()));
    }
    let tenant_id = TenantId::parse(&invoice.tenant_id)?;
    let legal = store::catalog::tenant(&mut *conn, &tenant_id)
        .await?
        .map(|t| t.legal)
        .unwrap_or_default();
    let recipient_now = Recipient::of(tenant_id.as_str(), &legal);
    if !issued {
        return Ok((seller_now.clone(), recipient_now));
    }
    let completed = Parties::completed(recorded, seller_now, recipient_now);
    let recorded = store::invoices::record_parties(conn, invoice.id, &completed).await?;
    let seller = recorded.seller.ok_or_else(|| {
        Error::internal(format!(
            "invoice {}: its supplier was not recorded",
            invoice.id
        ))
    })?;
    Ok((seller, recorded.recipient))
}

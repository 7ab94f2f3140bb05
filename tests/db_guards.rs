//! The database's last line of defence for CONTRACT.md section 5 ("an issued invoice is never
//! rewritten"): the lines of an issued, paid or void invoice cannot be added, changed or
//! removed, whoever writes them (migrations 0002 and 0060). Straight SQL against a migrated
//! database, no worker: the application's own checks are tested elsewhere.

mod common;

use common::TestDb;
use uuid::Uuid;

async fn invoice(db: &TestDb, tenant: &str, month: u32, status: &str, number: Option<i64>) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO invoices (id, number, tenant_id, period_start, period_end, currency, status,
           subtotal_cents, tax_cents, total_cents, issued_at, recipient_name)
         VALUES ($1, $2, $3, make_date(2026, $4, 1), make_date(2026, $4 + 1, 1), 'AUD', $5,
           0, 0, 0, CASE WHEN $5 = 'draft' THEN NULL ELSE now() END,
           CASE WHEN $2::bigint IS NOT NULL THEN $3 END)",
    )
    .bind(id)
    .bind(number)
    .bind(tenant)
    .bind(month as i32)
    .bind(status)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

/// Inserts one line per invoice in one statement, as a batch does.
async fn add_lines(db: &TestDb, invoices: &[Uuid], position: i32) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity,
           amount_cents)
         SELECT gen_random_uuid(), i, $2, 'plan_base', 'Plan: Studio', 1, 5000
         FROM unnest($1::uuid[]) i",
    )
    .bind(invoices)
    .bind(position)
    .execute(&db.pool)
    .await
    .map(|r| r.rows_affected())
}

fn refused(result: Result<u64, sqlx::Error>, what: &str) {
    match result {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("23514"), "{what}: {e}");
            assert!(e.message().contains("is not a draft"), "{what}: {e}");
        }
        other => panic!("{what}: expected the guard to refuse it, got {other:?}"),
    }
}

#[tokio::test]
async fn the_lines_of_an_issued_invoice_cannot_change_those_of_a_draft_can() {
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO tenants (tenant_id) SELECT 't' || i FROM generate_series(1, 600) i")
        .execute(&db.pool)
        .await
        .unwrap();
    // Many drafts in one statement, as a rollup batch writes them: allowed.
    let mut drafts = Vec::new();
    for i in 1..=600 {
        drafts.push(invoice(&db, &format!("t{i}"), 4, "draft", None).await);
    }
    assert_eq!(add_lines(&db, &drafts, 0).await.unwrap(), 600);
    let moved =
        sqlx::query("UPDATE invoice_lines SET amount_cents = 5100 WHERE invoice_id = ANY($1)")
            .bind(&drafts)
            .execute(&db.pool)
            .await
            .unwrap();
    assert_eq!(moved.rows_affected(), 600);

    // One issued invoice among the drafts spoils the whole statement.
    let issued = invoice(&db, "t1", 5, "issued", Some(1)).await;
    let mut mixed = drafts[..10].to_vec();
    mixed.push(issued);
    refused(
        add_lines(&db, &mixed, 1).await,
        "adding lines to an issued invoice",
    );

    // Lines written while it was a draft are final once it is issued.
    let draft = drafts[0];
    sqlx::query(
        "UPDATE invoices SET status = 'issued', number = 2, issued_at = now(),
           recipient_name = tenant_id WHERE id = $1",
    )
    .bind(draft)
    .execute(&db.pool)
    .await
    .unwrap();
    let update = sqlx::query("UPDATE invoice_lines SET amount_cents = 1 WHERE invoice_id = $1")
        .bind(draft)
        .execute(&db.pool)
        .await
        .map(|r| r.rows_affected());
    refused(update, "changing an issued invoice's line");
    let delete = sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
        .bind(draft)
        .execute(&db.pool)
        .await
        .map(|r| r.rows_affected());
    refused(delete, "deleting an issued invoice's line");

    let kept: i64 = sqlx::query_scalar(
        "SELECT sum(amount_cents)::bigint FROM invoice_lines WHERE invoice_id = $1",
    )
    .bind(draft)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, 5100, "the issued invoice's line is as it was issued");
}

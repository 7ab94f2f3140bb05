-- invoicer schema. Money columns on invoices are integer cents; prices and quantities are
-- NUMERIC so they stay exact. All timestamps are timestamptz; sessions run in UTC.

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    currency    text NOT NULL DEFAULT 'AUD' CHECK (currency ~ '^[A-Z]{3}$'),
    tax_rate    numeric NOT NULL DEFAULT 0.10 CHECK (tax_rate >= 0 AND tax_rate < 1),
    tax_label   text NOT NULL DEFAULT 'GST',
    tax_exempt  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plans (
    code        text PRIMARY KEY,
    name        text NOT NULL,
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    base_price  numeric NOT NULL CHECK (base_price >= 0),
    included    jsonb NOT NULL DEFAULT '{}',
    overage     jsonb NOT NULL DEFAULT '{}',
    proration   text NOT NULL DEFAULT 'daily' CHECK (proration IN ('daily', 'none')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE addons (
    code           text PRIMARY KEY,
    name           text NOT NULL,
    currency       text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    price          numeric NOT NULL CHECK (price >= 0),
    resource_kind  text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id             uuid PRIMARY KEY,
    tenant_id      text NOT NULL REFERENCES tenants,
    deployment_id  uuid NOT NULL,
    plan_code      text NOT NULL REFERENCES plans,
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz CHECK (ended_at IS NULL OR ended_at > started_at),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant_id, started_at);
CREATE INDEX subscriptions_deployment ON subscriptions (deployment_id, started_at);

CREATE TABLE subscription_addons (
    subscription_id  uuid NOT NULL REFERENCES subscriptions ON DELETE CASCADE,
    addon_code       text NOT NULL REFERENCES addons,
    position         int NOT NULL,
    PRIMARY KEY (subscription_id, addon_code)
);

-- One row per metering event: the primary key makes a repeated event_id count once.
CREATE TABLE usage_records (
    event_id       uuid PRIMARY KEY,
    deployment_id  uuid NOT NULL,
    resource_kind  text NOT NULL,
    quantity       numeric NOT NULL CHECK (quantity >= 0),
    occurred_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_deployment_time
    ON usage_records (deployment_id, occurred_at) INCLUDE (resource_kind, quantity);
CREATE INDEX usage_records_time ON usage_records USING brin (occurred_at);

-- Gapless numbering: one counter row, bumped inside the issuing transaction, so a rollback
-- returns its numbers along with everything else.
CREATE TABLE invoice_numbers (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_number  bigint NOT NULL
);
INSERT INTO invoice_numbers VALUES (true, 0);

CREATE TABLE invoices (
    id                 uuid PRIMARY KEY,
    number             bigint UNIQUE,
    tenant_id          text NOT NULL REFERENCES tenants,
    period_start       date NOT NULL,
    period_end         date NOT NULL CHECK (period_end > period_start),
    currency           text NOT NULL,
    status             text NOT NULL CHECK (status IN ('draft', 'issued', 'paid', 'void')),
    subtotal_cents     bigint NOT NULL,
    tax_cents          bigint NOT NULL,
    total_cents        bigint NOT NULL CHECK (total_cents = subtotal_cents + tax_cents),
    issued_at          timestamptz,
    paid_at            timestamptz,
    voided_at          timestamptz,
    void_reason        text,
    supersedes         uuid REFERENCES invoices DEFERRABLE INITIALLY DEFERRED,
    superseded_by      uuid REFERENCES invoices DEFERRABLE INITIALLY DEFERRED,
    rollup_request_id  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'void' OR (status = 'draft') = (number IS NULL)),
    CHECK ((status = 'void') = (voided_at IS NOT NULL)),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL))
);
-- At most one live invoice per tenant and period.
CREATE UNIQUE INDEX invoices_one_live_per_period ON invoices (tenant_id, period_start)
    WHERE status <> 'void';
CREATE INDEX invoices_tenant_period ON invoices (tenant_id, period_start DESC, id DESC);
CREATE INDEX invoices_period ON invoices (period_start DESC, id DESC);

CREATE TABLE invoice_lines (
    id             uuid PRIMARY KEY,
    invoice_id     uuid NOT NULL REFERENCES invoices ON DELETE CASCADE,
    position       int NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('plan_base', 'addon', 'overage', 'tax')),
    deployment_id  uuid,
    resource_kind  text,
    description    text NOT NULL,
    quantity       numeric NOT NULL,
    unit_price     numeric,
    amount_cents   bigint NOT NULL,
    UNIQUE (invoice_id, position)
);
CREATE INDEX invoice_lines_deployment ON invoice_lines (deployment_id) WHERE deployment_id IS NOT NULL;

-- An issued invoice is a tax invoice: its money and identity never change, and nothing leaves
-- paid or void. The application enforces the same; this is the last line of defence.
CREATE FUNCTION invoices_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('paid', 'void') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'invoice % is %, which is final', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status <> 'draft' AND (
        NEW.number IS DISTINCT FROM OLD.number OR
        NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR
        NEW.period_start IS DISTINCT FROM OLD.period_start OR
        NEW.period_end IS DISTINCT FROM OLD.period_end OR
        NEW.subtotal_cents IS DISTINCT FROM OLD.subtotal_cents OR
        NEW.tax_cents IS DISTINCT FROM OLD.tax_cents OR
        NEW.total_cents IS DISTINCT FROM OLD.total_cents) THEN
        RAISE EXCEPTION 'invoice % is %, it cannot be rewritten', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_guard BEFORE UPDATE ON invoices FOR EACH ROW EXECUTE FUNCTION invoices_guard();

-- Transactional outbox: rows commit with the change they announce; the relay publishes them
-- with msg_id as Nats-Msg-Id, so a repeat is dropped by the stream.
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    subject        text NOT NULL,
    msg_id         text NOT NULL UNIQUE,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    claimed_until  timestamptz,
    published_at   timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- One row per rollup request: its progress cursor and counts commit with each batch, so a
-- redelivered request resumes where the last committed batch left off.
CREATE TABLE rollup_runs (
    request_id        text PRIMARY KEY,
    period_start      date NOT NULL,
    period_end        date NOT NULL,
    force             boolean NOT NULL,
    draft             boolean NOT NULL,
    tenant_ids        text[],
    cursor_tenant     text,
    invoices_issued   int NOT NULL DEFAULT 0,
    invoices_drafted  int NOT NULL DEFAULT 0,
    invoices_skipped  int NOT NULL DEFAULT 0,
    tenants_failed    jsonb NOT NULL DEFAULT '[]',
    started_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);

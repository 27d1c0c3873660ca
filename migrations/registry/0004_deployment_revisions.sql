-- Every change of a deployment takes the next number of one registry-wide sequence as its
-- `revision`; `registry.deployment.updated` carries it. A subscriber that sees a number
-- skipped knows it missed an update (core NATS does not redeliver) and lists them all
-- again; one that sees an older revision than it holds ignores it (two registries may
-- publish out of order). A rolled-back change also skips a number: one extra re-list.
CREATE SEQUENCE registry.deployment_changes;
ALTER TABLE registry.deployments
    ADD COLUMN revision bigint NOT NULL DEFAULT nextval('registry.deployment_changes');

-- The one thing the registry publishes to other services' SQL: who owns each deployment.
-- Metering checks every usage event against it (a runner's usage for a deployment that
-- does not exist, or for a tenant that does not own it, is dead-lettered). Deployments are
-- never deleted and never change owner, so an answer read once stays true.
CREATE VIEW registry.deployment_owners AS
    SELECT id AS deployment_id, tenant_id FROM registry.deployments;

-- registry: models, their versions (content-addressed artifacts) and deployments.
CREATE SCHEMA IF NOT EXISTS registry;

CREATE TABLE registry.models (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    framework   text NOT NULL CHECK (framework IN ('onnx')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- artifact_digest is "sha256:<hex>" of the artifact's bytes, which live in the NATS
-- Object Store bucket <namespace>_artifacts under that digest.
CREATE TABLE registry.model_versions (
    id               text PRIMARY KEY,
    model_id         text NOT NULL REFERENCES registry.models (id),
    version          text NOT NULL,
    artifact_digest  text NOT NULL CHECK (artifact_digest ~ '^sha256:[0-9a-f]{64}$'),
    artifact_bytes   bigint NOT NULL CHECK (artifact_bytes > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version)
);

CREATE TABLE registry.deployments (
    id                text PRIMARY KEY,
    tenant_id         text NOT NULL,
    name              text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    model_version_id  text NOT NULL REFERENCES registry.model_versions (id),
    gpu_class         text NOT NULL,
    -- The residency rule: the only PoPs that may place, serve or route this deployment.
    allowed_pops      text[] NOT NULL CHECK (cardinality(allowed_pops) >= 1),
    min_replicas      int NOT NULL DEFAULT 0,
    max_replicas      int NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    CHECK (min_replicas >= 0 AND max_replicas >= 1 AND max_replicas >= min_replicas)
);

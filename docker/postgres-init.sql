-- Runs once, when the compose stack's PostgreSQL volume is first created: MLflow's backend store
-- beside Dagster's database (POSTGRES_DB), owned by the same user.
CREATE DATABASE mlflow;

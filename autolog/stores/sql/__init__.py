"""MLflow's schema on SQLite, PostgreSQL and MySQL."""

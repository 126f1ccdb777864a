"""MLflow: runs with their params, metrics and artefacts (`runs`), the Model Registry's champion/challenger
policy (`promotion`) and the team's tracking server on PostgreSQL (`server`).

May import: vapm.core, vapm.config.
"""

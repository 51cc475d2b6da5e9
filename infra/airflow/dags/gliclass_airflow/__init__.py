"""Helpers for the gliclass-dist Airflow DAGs.

Kept free of Airflow imports (and of torch and gliclass_dist itself) so that an Airflow worker
needs only Airflow, the Ray job client, ``deltalake`` and ``pyyaml``, and so that the checks can
be tested on their own. ``.airflowignore`` keeps the DAG processor from scanning this package.
"""

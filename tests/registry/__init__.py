"""Tests of the SQL registry (``butler_registry``) and the registry contract every implementation meets."""

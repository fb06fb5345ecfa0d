"""Plans: the plan catalog, usage and customer imports, and plan fit."""

from plans.catalog import (
    CatalogError,
    CatalogFile,
    CatalogSummary,
    PlanSpec,
    apply_catalog,
    load_catalog_file,
)
from plans.imports import CsvImportError, ImportSummary, import_customers, import_usage

__all__ = [
    "CatalogError",
    "CatalogFile",
    "CatalogSummary",
    "CsvImportError",
    "ImportSummary",
    "PlanSpec",
    "apply_catalog",
    "import_customers",
    "import_usage",
    "load_catalog_file",
]

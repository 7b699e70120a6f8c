"""The ``oci_genai`` Airflow connection type of oci-genai-batch.

Registered through the ``apache_airflow_provider`` entry point of this project's package
(``pyproject.toml``), so Airflow's ProvidersManager finds it wherever the project is
installed (the UI's connection form, ``airflow providers hooks``). The form is declared here
(``conn-fields`` / ``ui-field-behaviour``), not through the hook methods deprecated in 3.2.

This module imports nothing from Airflow: ProvidersManager imports it early.
"""

from __future__ import annotations

from typing import Any

from oci_genai_provider.fields import CONN_FIELDS, UI_FIELD_BEHAVIOUR

CONN_TYPE = "oci_genai"
DEFAULT_CONN_ID = "oci_genai_default"

# The default connection: the DAGs' default conn_id. With the embedded default (backend
# local) or hash, no connection is needed at all; this one exists so the conn_id resolves
# and so an operator can fill in the OCI fields (compartment, key or config file, region)
# for backend oci. As an environment variable: AIRFLOW_CONN_OCI_GENAI_DEFAULT=<its JSON>.
DEFAULT_CONNECTION: dict[str, Any] = {
    "conn_type": CONN_TYPE,
    "description": "OCI Generative AI; not used by backend local/hash (the embedded default)",
    "extra": {"auth": "api_key", "oci_profile": "DEFAULT"},
}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow (the runtime provider-info schema)."""
    return {
        # must equal the distribution's name, or ProvidersManager refuses the provider
        "package-name": "oci-genai-batch",
        "name": "OCI Generative AI batch",
        "description": "Batch embeddings and summaries with OCI Generative AI.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": "oci_genai_provider.hooks.OciGenAIHook",
                "hook-name": "OCI Generative AI",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }


__all__ = ["CONN_TYPE", "DEFAULT_CONNECTION", "DEFAULT_CONN_ID", "get_provider_info"]
